# Sourced by demo.sh and test.sh: sets up what this project needs on a fresh machine that has
# Python 3 (3.10 or newer) and its OS package manager, then activates the virtual environment.
#
#   - system packages for Qt/OpenGL (and Xvfb, napari's screen on a machine without one):
#     installed with apt-get when run as root or with password-less sudo, else named;
#   - a virtual environment (.venv, or $STEM_AE_VENV) with PyTorch: the CPU build on a
#     machine without an NVIDIA GPU (a plain 'pip install torch' would bring a multi-GB CUDA
#     build), the default CUDA build where `nvidia-smi` sees a GPU; then this package with its
#     test extras. Later runs reuse what is there.

STEM_AE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STEM_AE_SYSTEM_PACKAGES=(
    xvfb xauth libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
    libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1
)
STEM_AE_TORCH_CPU="torch==2.13.0+cpu"

stem_ae_say() { echo "== $*" >&2; }

stem_ae_system_packages() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        stem_ae_say "not a Debian/Ubuntu system: check that Qt's xcb libraries (libxcb-cursor," \
            "libxcb-icccm, libxcb-keysyms, libxkbcommon-x11), Mesa OpenGL and Xvfb are installed"
        return 0
    fi
    local missing=() p
    for p in "${STEM_AE_SYSTEM_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo"
        else
            echo "stem-ae set-up: these system packages are missing: ${missing[*]}" >&2
            echo "install them with:  sudo apt-get install ${missing[*]}" >&2
            return 1
        fi
    fi
    stem_ae_say "installing system packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

stem_ae_has_nvidia_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

stem_ae_python_env() {
    local venv="${STEM_AE_VENV:-$STEM_AE_ROOT/.venv}" py="${PYTHON:-python3}"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    if [ ! -x "$venv/bin/python" ]; then
        stem_ae_say "creating the virtual environment $venv"
        "$py" -m venv "$venv" || return 1
    fi
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
    if ! python -c "import torch" 2>/dev/null; then
        if stem_ae_has_nvidia_gpu; then
            stem_ae_say "NVIDIA GPU found: installing PyTorch with CUDA"
            python -m pip install -q "torch>=2.1,<3" || return 1
        else
            stem_ae_say "no NVIDIA GPU: installing the CPU build of PyTorch ($STEM_AE_TORCH_CPU)"
            # PyTorch's CPU index; pip also finds a local copy of that wheel where it has one
            python -m pip install -q "$STEM_AE_TORCH_CPU" --timeout 30 --retries 1 \
                --extra-index-url https://download.pytorch.org/whl/cpu || return 1
        fi
    fi
    local stamp="$venv/.stem-ae-installed"
    if [ ! -f "$stamp" ] || [ "$STEM_AE_ROOT/pyproject.toml" -nt "$stamp" ]; then
        stem_ae_say "installing napari-4dstem-autoencoder and its test extras"
        python -m pip install -q -e "$STEM_AE_ROOT[testing]" || return 1
        touch "$stamp"
    fi
}

stem_ae_setup() {
    stem_ae_system_packages && stem_ae_python_env
}
