"""ExamplePolicy: the built-in pi0-shaped policy with random weights, and the pipeline that serves it.

act(observation) = the prefix stage once (cached by observation id) + the expert stage replayed N times,
one Euler step per replay (modules.py says why the loop stays outside the graph). Each stage is its own
GraphRunner with its own options, so one can run eager while the other keeps its graph. act_eager() is the
same computation on the bare modules: the reference every graph result is compared with. A stage may
run its exported .onnx file on OrtRunner instead (onnx.py): give that stage OrtOptions and onnx_folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from graphrun.errors import ConfigError
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.runner import GraphRunner
from graphrun.ort.options import OrtOptions
from graphrun.pipeline.pipeline import Pipeline
from graphrun.pipeline.policy.config import ExamplePolicyConfig
from graphrun.pipeline.policy.modules import ExpertStep, PrefixEncoder, seeded_
from graphrun.pipeline.policy.observation import Observation, check_observation
from graphrun.pipeline.policy.onnx import EXPORT_BATCH, export_policy, ort_runner
from graphrun.pipeline.stage import Stage, StageRunner

STAGES = ("prefix", "expert")
StageOptions = RunnerOptions | OrtOptions  # GraphRunner over the module, or OrtRunner over its .onnx file


class ExamplePolicy:
    """The example policy's modules on one device and dtype, deterministic given config.seed."""

    def __init__(
        self,
        config: ExamplePolicyConfig | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.config = c = config or ExamplePolicyConfig()
        self.device, self.dtype = torch.device(device), dtype
        self.prefix = self._module(PrefixEncoder(c), c.seed)
        self.expert = self._module(ExpertStep(c), c.seed + 1)
        top = max(c.batch_sizes)
        # t_i = i / N for step i, one row per batch row: (num_steps, top, 1), sliced per call
        steps = torch.arange(c.num_steps, dtype=torch.float32) / c.num_steps
        self._times = steps.view(-1, 1, 1).expand(-1, top, 1).contiguous().to(self.device, dtype)
        self._noise = torch.Generator(self.device).manual_seed(c.seed + 2)

    def _module(self, module: torch.nn.Module, seed: int) -> torch.nn.Module:
        return seeded_(module, seed).to(self.device, self.dtype).eval().requires_grad_(False)

    # ----- inputs ---------------------------------------------------------------------------------------

    def observation(
        self, batch: int = 1, *, seed: int = 0, id: object = None, noise: bool = True
    ) -> Observation:
        """A random observation of `batch` rows (token ids span the vocabulary), with its noise unless
        noise=False (then act() draws it from the policy's generator)."""
        c, gen = self.config, torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, c.vocab_size, (batch, c.num_tokens), generator=gen)
        tokens[0, 0], tokens[-1, -1] = 0, c.vocab_size - 1

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=gen).to(self.device, self.dtype)

        return Observation(
            images=rand(batch, c.num_patches, c.patch_dim),
            tokens=tokens.to(self.device),
            state=rand(batch, c.state_dim),
            id=id,
            noise=rand(batch, c.horizon, c.action_dim) if noise else None,
        )

    def _start(self, obs: Observation, batch: int) -> torch.Tensor:
        if obs.noise is not None:
            return obs.noise
        c = self.config
        shape = (batch, c.horizon, c.action_dim)
        return torch.randn(shape, generator=self._noise, device=self.device, dtype=self.dtype)

    def _times_for(self, batch: int) -> torch.Tensor:
        top = self._times.shape[1]
        if batch <= top:
            return self._times[:, :batch]
        return self._times[:, :1].expand(-1, batch, 1)

    # ----- acting -----------------------------------------------------------------------------------------

    def flow(self, pipeline: Pipeline, obs: Observation) -> torch.Tensor:
        """act(): the prefix once (cached by obs.id), then num_steps expert steps -> (B, horizon, action_dim)
        (the Euler update is inside the expert step: one replay per step)."""
        batch = check_observation(obs, self.config, self.device, self.dtype)
        kv = pipeline.call("prefix", obs.images, obs.tokens, obs.state, key=obs.id)
        x, times = self._start(obs, batch), self._times_for(batch)
        for i in range(self.config.num_steps):
            x = pipeline.call("expert", kv, x, times[i])
        return x.clone()  # the expert's output aliases its static buffer until its next replay

    @torch.no_grad()
    def act_eager(self, obs: Observation) -> torch.Tensor:
        """The same computation on the bare modules, no pipeline: the reference."""
        batch = check_observation(obs, self.config, self.device, self.dtype)
        kv = self.prefix(obs.images, obs.tokens, obs.state)
        x, times = self._start(obs, batch), self._times_for(batch)
        for i in range(self.config.num_steps):
            x = self.expert(kv, x, times[i])
        return x

    # ----- the pipeline -------------------------------------------------------------------------------------

    def pipeline(
        self,
        options: StageOptions | None = None,
        *,
        stage_options: Mapping[str, StageOptions] | None = None,
        registry: CollectorRegistry | None = None,
        onnx_folder: str | Path | None = None,
    ) -> Pipeline:
        """Build and capture the two stages: `options` for both, `stage_options[stage]` for one.

        RunnerOptions: a GraphRunner over the stage's module; OrtOptions: an OrtRunner over the stage's
        file in `onnx_folder` (export_onnx() writes them), so one pipeline may mix both. Unset fields are
        filled per stage: sizes (config.batch_sizes), name (<model>.<stage>), registry.
        """
        per_stage = dict(stage_options or {})
        unknown = sorted(set(per_stage) - set(STAGES))
        if unknown:
            raise ConfigError(f"stage_options for unknown stages {unknown}; the stages are {list(STAGES)}")
        c, base = self.config, options or RunnerOptions()
        obs = self.observation(max(c.batch_sizes), seed=c.seed)
        with torch.no_grad():
            kv = self.prefix(obs.images, obs.tokens, obs.state)
        assert obs.noise is not None  # observation() draws it
        examples = {"prefix": (obs.images, obs.tokens, obs.state), "expert": (kv, obs.noise, self._times[0])}
        stages = []
        for name in STAGES:
            opts = self._filled(per_stage.get(name, base), name, registry)
            runner = self._runner(name, examples[name], opts, onnx_folder)
            entries = c.prefix_cache_entries if name == "prefix" else 0
            stages.append(Stage(name, runner, cache_entries=entries))
        return Pipeline(stages, self.flow, model=c.model, registry=registry)

    def _runner(
        self,
        stage: str,
        example: tuple[torch.Tensor, ...],
        opts: StageOptions,
        onnx_folder: str | Path | None,
    ) -> StageRunner:
        if isinstance(opts, OrtOptions):
            return ort_runner(onnx_folder, stage, example, opts)
        module = self.prefix if stage == "prefix" else self.expert
        return GraphRunner(module, example, options=opts)

    def export_onnx(self, folder: str | Path) -> dict[str, Path]:
        """Write one .onnx file per stage into `folder` (onnx.py; needs graphrun[onnx]); files by stage."""
        modules = {"prefix": self.prefix, "expert": self.expert}
        return export_policy(modules, self._export_examples(), self.dtype, folder)

    def _export_examples(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Each stage's example inputs for the export, at EXPORT_BATCH rows."""
        obs = self.observation(EXPORT_BATCH, seed=self.config.seed)
        assert obs.noise is not None
        with torch.no_grad():
            kv = self.prefix(obs.images, obs.tokens, obs.state)
        t = torch.full((EXPORT_BATCH, 1), 0.5, dtype=self.dtype, device=kv.device)
        return {"prefix": (obs.images, obs.tokens, obs.state), "expert": (kv, obs.noise, t)}

    def _filled(self, opts: StageOptions, stage: str, registry: CollectorRegistry | None) -> StageOptions:
        c = self.config
        sizes = c.batch_sizes if opts.sizes is None and opts.max_batch_size is None else opts.sizes
        return replace(
            opts,
            sizes=sizes,
            name=opts.name or f"{c.model}.{stage}",
            registry=opts.registry if opts.registry is not None else registry,
        )
