#!/usr/bin/env bash
# Set up osn-nerfstudio on this machine (idempotent) and run one task.
#
#   bash tools/dev.sh demo     set up, train OSN on the embedded demo scene, report how it did, draw a contact sheet
#   bash tools/dev.sh test     set up, lint (ruff), then run the test suite (extra arguments go to pytest;
#                              -m "not slow" leaves out the tests that train in a subprocess)
#   bash tools/dev.sh setup    set up only
#
# The virtual environment lives in $OSN_VENV (default ~/.cache/osn-nerfstudio/venv) so that every
# checkout on the machine reuses it; it is (re)installed only when pyproject.toml or the checkout changes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${OSN_VENV:-$HOME/.cache/osn-nerfstudio/venv}
PYTHON=${OSN_PYTHON:-python3}

log() { printf '\033[1;34m[osn]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1
  fi
}

apt_install() {
  command -v apt-get >/dev/null || { log "apt-get not found; install these system packages yourself: $*"; return 1; }
  log "installing system packages: $*"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
  if [ -x "$VENV/bin/python" ]; then return; fi
  log "creating virtual environment $VENV"
  mkdir -p "$(dirname "$VENV")"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$PYTHON" -m venv "$VENV"
  fi
}

ensure_packages() {
  local stamp="$VENV/.osn-nerfstudio-installed" want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $ROOT"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  log "installing osn-nerfstudio and its dependencies into $VENV (first run: several minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
  echo "$want" >"$stamp"
}

# System programs the tools call: ffmpeg for ns-render's videos; for the tests also Chromium and its
# WebDriver, which open the viewer page. Installed from Debian when missing; without root the tests that
# need them say so.
SYSTEM_TOOLS="ffmpeg:ffmpeg"
TEST_TOOLS="chromium:chromium chromedriver:chromium-driver"

ensure_system_tools() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}" || log "could not install ${missing[*]}; the parts that need them will fail or be skipped"
  fi
}

setup() {
  ensure_venv
  ensure_packages
  ensure_system_tools $SYSTEM_TOOLS
  export PATH="$VENV/bin:$PATH"
}

task=${1:-}
shift || true
case "$task" in
  setup)
    setup
    log "ready: source $VENV/bin/activate"
    ;;
  test)
    setup
    ensure_system_tools $TEST_TOOLS
    cd "$ROOT"
    log "ruff check"
    python -m ruff check .
    exec python -m pytest "$@"
    ;;
  demo)
    setup
    cd "$ROOT"
    osn-train configs/demo-cpu.yaml "$@"
    run=$(ls -td outputs/osn-demo/osn/*/ | head -n 1)
    log "trained: ${run}config.yml; evaluating on the demo's novel-view test cameras"
    # nerfstudio's own CLI warns about torch deprecations before the plugin loads; silence those three by message
    PYTHONWARNINGS="ignore:\`torch.jit.script\` is deprecated:FutureWarning,ignore:\`torch.cuda.amp.custom_:FutureWarning" \
      ns-eval --load-config "${run}config.yml" --output-path "${run}eval.json" --render-output-path "${run}renders"
    osn-sample-configurations --load-config "${run}config.yml" --output "${run}configurations.json" --overwrite
    log "rendering the contact sheet: the test views at the truth and at sampled configurations"
    osn-render contact-sheet --load-config "${run}config.yml" --configurations-file "${run}configurations.json" \
      --output-path "${run}contact-sheet.png" --overwrite True
    python -m osn_nerfstudio.scripts.summarise_run "$run"  # its last line names the contact sheet
    ;;
  *)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
