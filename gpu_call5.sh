#!/usr/bin/env bash
# session 11 call 2: prefill-heavy c8/c1 modes, pipeline + act + LLM engine GPU tests
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONUNBUFFERED=1 PYTHONPATH=src:/tmp/site
mkdir -p "$OUT/x"
B="python3 -m graphrun bench serve"
P="--prompt-len-median 2048 --prompt-len-max 2048 --output-len-median 16 --output-len-max 16 --min-len 16"
t0=$SECONDS
echo "== prefill c1 ($((SECONDS-t0)) s)"
timeout 150 $B --modes full,full_and_piecewise --concurrency 1 --num-requests 30 $P --out "$OUT/x/pf1" 2>&1 | grep -v -e '^{' -e uvicorn.access | tail -8
cp "$OUT"/x/pf1/serve-*.json "$OUT/serve-prefill-c1.json"
for c in raw aiohttp; do
  echo "== client $c c64 ($((SECONDS-t0)) s)"
  timeout 120 $B --modes full --http-client $c --concurrency 64 --num-requests 300 --prompt-len-median 512 --prompt-len-max 3000 --output-len-median 128 --output-len-max 600 --out "$OUT/x/cl-$c" 2>&1 | grep -v -e '^{' -e uvicorn.access | tail -4
  cp "$OUT"/x/cl-$c/serve-*.json "$OUT/serve-c64-client-$c.json"
done
echo "== gpu tests ($((SECONDS-t0)) s)"
for t in tests/pipeline/test_pipeline_gpu.py tests/serve/act/test_act_gpu.py tests/llm/test_engine_gpu.py tests/llm/test_prefix_cache_gpu.py tests/llm/test_logprobs_gpu.py tests/llm/test_choices_gpu.py tests/llm/test_structured_output_gpu.py tests/llm/test_background_engine_gpu.py tests/ort tests/pipeline/test_pipeline_ort_gpu.py; do
  left=$((570-(SECONDS-t0))); [ $left -lt 30 ] && { echo "SKIPPED (time) $t"; continue; }
  n=$(basename $t .py)
  timeout $left python3 -m pytest -q -m gpu -p no:cacheprovider $t > "$OUT/x/$n.log" 2>&1; rc=$?
  echo "$t rc=$rc $(tail -1 $OUT/x/$n.log) [$((SECONDS-t0)) s]"
  [ $rc -ne 0 ] && [ $rc -ne 5 ] && grep -E "^(FAILED|ERROR)|Error|error:" "$OUT/x/$n.log" | head -6 | cut -c1-300
done
echo "done ($((SECONDS-t0)) s)"
tar -czf "$OUT/extras.tar.gz" --exclude='*.json' -C "$OUT" x && rm -rf "$OUT/x"
