#!/usr/bin/env bash
# The GPU check: benchmarks/gpu_check.py's checks and measurements (reference fixtures on the device, prompt
# tuning through stock fairseq-train in fp16 and bf16, beam search on the device against the CPU, speed and
# memory of ofa_base and ofa_large), ending with a markdown summary. Files go to $OUT (else ./gpu_check_out).
#
#   bash benchmarks/gpu_check.sh --download   # here (a package registry reachable): fill .gpu_check/
#   bash benchmarks/gpu_check.sh              # on the GPU machine (no registry): install from .gpu_check/, check
#   bash benchmarks/gpu_check.sh --cpu        # micro sizes on the CPU: the same logic (tests/test_gpu_check.py)
#
# .gpu_check/ (ignored; carry it to the GPU machine) holds wheels/ (CPython 3.12, manylinux x86-64) of what
# fairseq and the plugin import beyond torch, torchvision, timm, numpy, pillow, pyyaml and safetensors, except
# scipy and scikit-learn (fairseq's sentence_prediction criterion imports them; 50 MB of wheels, and the GPU
# image has them), and shared/, a copy of ../shared/ofa_reference and ../shared/ofa_bpe (../shared does not
# travel with the working tree). The pycocoevalcap there has no Java parts: where `java` is on the PATH the
# plugin would call them for caption metrics, so take java off the PATH if the image has it.
set -euo pipefail
cd "$(dirname "$0")/.."
pack=.gpu_check
wheels=$pack/wheels
python=${PYTHON:-python3}

# pip name -> module it provides; installed on the GPU machine only where the module does not import
declare -A MODULE=([setuptools]=setuptools [wheel]=wheel [packaging]=packaging [tqdm]=tqdm [regex]=regex
                   [portalocker]=portalocker [tabulate]=tabulate [colorama]=colorama [sacrebleu]=sacrebleu
                   [bitarray]=bitarray [omegaconf]=omegaconf [antlr4-python3-runtime]=antlr4
                   [hydra-core]=hydra [pycocoevalcap]=pycocoevalcap [fairseq-fixed]=fairseq)
# in install order: the build tools first, fairseq (built from its sdist) last
ORDER=(setuptools wheel packaging tqdm regex portalocker tabulate colorama sacrebleu bitarray omegaconf
       antlr4-python3-runtime hydra-core pycocoevalcap fairseq-fixed)
PINNED=(hydra-core==1.3.2 omegaconf==2.3.0 sacrebleu)  # fairseq-fixed 0.12.3.1 pins hydra-core and omegaconf
SDISTS=(antlr4-python3-runtime==4.9.3 fairseq-fixed==0.12.3.1)  # neither has a wheel

download() {
  rm -rf "$wheels" && mkdir -p "$wheels"
  local wanted=(setuptools wheel packaging tqdm regex portalocker tabulate colorama bitarray pycocoevalcap
                "${PINNED[@]}")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$wheels" "${wanted[@]}"
  # sdists: no metadata build here (it would need fairseq's build requirements); the GPU machine builds them
  python3 -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$wheels" "${SDISTS[@]}"
  # pycocoevalcap's wheel is 104 MB of Java (the PTB tokenizer, METEOR, SPICE); without Java the plugin
  # tokenizes in Python and uses only its Python BLEU, CIDEr and ROUGE-L: keep those
  "$python" benchmarks/gpu_check.py slim-wheel "$wheels"/pycocoevalcap-*.whl
  rm -rf "$pack/shared" && mkdir -p "$pack/shared"
  cp -r ../shared/ofa_reference ../shared/ofa_bpe "$pack/shared/"
  du -sh "$wheels" "$pack/shared"
  local mib=$(( $(du -sk "$pack" | cut -f1) / 1024 ))
  echo "gpu_check: $pack holds $mib MiB (carry it: it travels with the working tree, 64 MiB at most)"
  if (( mib >= 40 )); then echo "gpu_check: $pack is $mib MiB, over 40 MiB" >&2; exit 1; fi
}

importable() { (cd / && "$python" -c "import $1" 2>/dev/null); }

install_offline() {
  local missing=()
  for name in "${ORDER[@]}"; do
    importable "${MODULE[$name]}" || missing+=("$name")
  done
  if (( ${#missing[@]} == 0 )); then return; fi
  if [[ ! -d $wheels ]]; then
    echo "gpu_check: ${missing[*]} missing and no $wheels: run 'bash benchmarks/gpu_check.sh --download' where a" \
         "package registry is reachable, and carry $pack" >&2
    exit 1
  fi
  echo "gpu_check: installing ${missing[*]} from $wheels"
  for name in "${missing[@]}"; do
    # READTHEDOCS=1: fairseq's setup.py builds none of its C++/Cython/CUDA extensions (minutes of compiling);
    # the plugin needs none of them (it batches rows itself and scores with its own scorers)
    READTHEDOCS=1 "$python" -m pip install -q --no-index --find-links "$wheels" --no-deps --no-build-isolation \
      --ignore-installed "$name"
  done
  (cd / && "$python" -c "import fairseq_cli.train, fairseq_cli.generate")  # its error if something is still missing
}

case "${1:-}" in
  --download) download ;;
  --cpu) exec "$python" benchmarks/gpu_check.py --device cpu ;;
  "") install_offline
      "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no GPU (use --cpu)')"
      exec "$python" benchmarks/gpu_check.py --device cuda ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--download | --cpu]" >&2; exit 2 ;;
esac
