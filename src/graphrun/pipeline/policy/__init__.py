"""The built-in example policy: a pi0-shaped prefix encoder and a flow-matching action expert."""
