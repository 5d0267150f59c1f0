#!/usr/bin/env bash
# Train the committed weights on a GPU host: generate the synthetic corpus there, train all four
# models with `cxrmesh.ml.train`, and pack weights + metrics + histories into OUT_DIR.
#
# Runs with the host's own PyTorch (no project venv): wheels the host lacks can be put in .whl/
# (pydicom, faker, segmentation-models-pytorch, timm, pytorch-metric-learning; see docs/models.md).
# usage: scripts/train_on_gpu.sh OUT_DIR [STUDIES] [SEG_EPOCHS] [LANDMARK_EPOCHS] [EMBED_EPOCHS]
set -euo pipefail
OUT=${1:?usage: train_on_gpu.sh OUT_DIR [STUDIES] [SEG_EPOCHS] [LANDMARK_EPOCHS] [EMBED_EPOCHS]}
N=${2:-3000}; SEG=${3:-12}; LM=${4:-20}; EMB=${5:-100}
WORK=${WORK:-/tmp/cxrmesh-gpu}
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-420}
DEVICE=${DEVICE:-cuda}
ONLY=${ONLY:-}               # e.g. "embedder,seg": a subset of seg, ensemble, landmarks, embedder, prognosis
SEG_SECONDS=${SEG_SECONDS:-0}  # wall-time budget per segmentation member (0 = none)
SEG_MEMBERS=${SEG_MEMBERS:-}   # e.g. "lung_seg_fpn,lung_seg_manet" (empty = all five); with SEG_PARALLEL, cxr_landmarks too
SEG_PARALLEL=${SEG_PARALLEL:-} # 1 = the members train side by side (scripts/train_members_parallel.py)
mkdir -p "$OUT" "$WORK"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl
  export PYTHONPATH="$WORK/site:$PWD/src"
else
  export PYTHONPATH="$PWD/src"
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
log "host: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo no GPU)"
python3 -c "import torch, timm, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/log.txt"
python3 -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1 | tee -a "$OUT/log.txt" || true
log "trtexec: $(command -v trtexec || echo absent)"

log "synth $N studies"
rm -rf "$WORK/corpus"
# (a -c program, not stdin: the synth worker processes re-import __main__)
python3 -c '
import os, sys
from pathlib import Path
from cxrmesh.synth.corpus import generate
s = generate(Path(sys.argv[1]), int(sys.argv[2]), seed=1, write_dicom=False, workers=os.cpu_count())
print(s.get("splits"))
' "$WORK/corpus" "$N" 2>&1 | tail -3 | tee -a "$OUT/log.txt"

set +e  # from here on a failed or timed-out step still leaves the rest and the pack
if [ -n "$SEG_PARALLEL" ]; then
  log "members in parallel: $SEG epochs / ${SEG_SECONDS}s each"
  timeout "$TRAIN_TIMEOUT" python3 scripts/train_members_parallel.py "$WORK/corpus" "$WORK" "$SEG" "$SEG_SECONDS" \
    --device "$DEVICE" --landmark-epochs "$LM" ${SEG_MEMBERS//,/ } 2>&1 | grep -v Warning | tee -a "$OUT/log.txt"
  DONE=seg; [[ ",$SEG_MEMBERS," == *,cxr_landmarks,* ]] && DONE="seg|landmarks"  # trained beside the members
  ONLY=$(echo "${ONLY:-seg,ensemble,landmarks,embedder,prognosis}" | tr , '\n' | grep -Evx "$DONE" | paste -sd, -)
  [ -n "$ONLY" ] || ONLY=none
fi
log "train (seg $SEG epochs / ${SEG_SECONDS}s, landmarks $LM, embedder $EMB epochs; only: ${ONLY:-all})"
timeout "$TRAIN_TIMEOUT" python3 - "$WORK/corpus" "$WORK" "$SEG" "$LM" "$EMB" "$ONLY" "$SEG_SECONDS" "$DEVICE" "$SEG_MEMBERS" <<'PY' 2>&1 | grep -v Warning | tee -a "$OUT/log.txt"
import json, logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
from cxrmesh.ml.train import TrainConfig, train_all
corpus, work = Path(sys.argv[1]), Path(sys.argv[2])
t = time.time()
cfg = TrainConfig(corpus=corpus, out=work / "runs", weights=work / "weights", seed=0,
                  seg_epochs=int(sys.argv[3]), seg_limit=None, landmark_epochs=int(sys.argv[4]),
                  embed_epochs=int(sys.argv[5]), embed_batch=60, device=sys.argv[8], resume=False,
                  only=tuple(p for p in sys.argv[6].split(",") if p), seg_seconds=float(sys.argv[7]) or None,
                  seg_members=tuple(p for p in sys.argv[9].split(",") if p))
m = train_all(cfg)
print(json.dumps(m, indent=1, sort_keys=True))
print(f"train_all took {time.time() - t:.0f} s")
PY
set -e
log "pack"
cd "$WORK"
tar -cf result.tar weights runs/*/history.jsonl $(ls runs/metrics.json 2>/dev/null) 
split -b 15M -d result.tar "$OUT/result.tar."
log "done"
