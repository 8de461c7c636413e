"""An emulated Raspberry Pi 4 (Cortex-A72, aarch64) for benchmarks: qemu user mode.

The provisioning (apt, dpkg-deb, pip downloads) lives here, apart from the timing in
``bench/``: ``bench`` imports this module only when ``--target pi4-emulated`` is asked for.

``ensure_emulator()`` sets up, once, into ``$DSP_DEPLOY_CACHE/pi4`` (default
``~/.cache/dsp-deploy/pi4``), with no root, binfmt_misc or container:

1. ``qemu-aarch64-static`` from Debian's ``qemu-user-static`` package (``apt-get download``
   with private package lists; nothing is installed on the system);
2. an arm64 sysroot: Debian's python3.X-minimal, its stdlib, glibc and libstdc++, resolved
   by apt for arm64 and unpacked with ``dpkg-deb -x``;
3. the aarch64 wheels of onnxruntime (the host's version) and numpy, installed with the
   host's pip (``--platform manylinux_2_X_aarch64 --only-binary=:all:``);
4. a root for ``qemu -L`` that links the sysroot and adds a Pi 4 ``/proc/cpuinfo`` and
   ``/sys/devices/system/cpu``: onnxruntime's cpuinfo library crashes on the host's x86
   files, and qemu looks every absolute path up under ``-L`` first.

Emulated timings compare models with each other within one run; they are not Pi timings
(qemu's cost per instruction depends on the instruction mix and the host).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dsp_deploy.errors import InputError

logger = logging.getLogger(__name__)

CPU = "cortex-a72"
LAYOUT = "1"  # bump when the cache layout changes
_DEBS = ("libstdc++6", "libgcc-s1", "libgomp1")


class EmulatorError(InputError):
    """The emulator cannot be set up or run here; the message says what is missing."""


@dataclass(frozen=True)
class Emulator:
    """A ready emulated aarch64 python: ``command(...)`` runs it under qemu."""

    qemu: Path
    root: Path  # qemu -L prefix: the sysroot plus a fake Pi 4 /proc and /sys
    python: Path  # the aarch64 python inside the sysroot
    site_packages: Path
    cpu: str = CPU

    def command(self, args: Sequence[str]) -> list[str]:
        return [str(self.qemu), "-cpu", self.cpu, "-L", str(self.root), str(self.python), *args]

    def env(self) -> dict[str, str]:
        """The host's environment without paths to x86 code, plus the wheels' folder."""
        dropped = {"PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "LD_LIBRARY_PATH"}
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env.update(PYTHONPATH=str(self.site_packages), PYTHONNOUSERSITE="1")
        return env


def cache_dir() -> Path:
    """``$DSP_DEPLOY_CACHE`` or ``~/.cache/dsp-deploy``."""
    env = os.environ.get("DSP_DEPLOY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dsp-deploy"


def ensure_emulator(home: Path | None = None, *, cpus: int | None = None) -> Emulator:
    """Set the emulator up on first use (30-50 s, 204 MB in the cache); then reuse it."""
    home = (home or cache_dir() / "pi4").absolute()
    cpus = cpus or max(1, min(os.cpu_count() or 1, 4))
    _check_host()
    home.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with _locked(home / ".lock"):
        qemu = _setup_qemu(home)
        sysroot, pyver = _setup_sysroot(home, qemu)
        root = _setup_root(home, sysroot, cpus)
        site = _setup_wheels(home, sysroot, pyver)
        shutil.rmtree(home / "apt", ignore_errors=True)  # package lists: setup only
    if (seconds := time.monotonic() - start) > 1:  # a setup ran, not a reuse
        logger.info("pi4-emulated: ready in %.0f s, in %s", seconds, home)
    return Emulator(qemu, root, sysroot / "usr" / "bin" / f"python{pyver}", site)


def _check_host() -> None:
    machine = os.uname().machine
    if machine not in ("x86_64", "amd64"):
        raise EmulatorError(
            f"pi4-emulated needs an x86_64 host; this one is {machine} (use --target native)"
        )
    missing = [
        tool for tool in ("apt-get", "apt-cache", "dpkg", "dpkg-deb") if not shutil.which(tool)
    ]
    if missing:
        raise EmulatorError(
            "pi4-emulated sets up qemu from Debian packages and needs a Debian/Ubuntu host; "
            f"not found on PATH: {', '.join(missing)}"
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:  # parallel first uses wait for each other
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(home: Path, step: str, cmd: Sequence[str], *, cwd: Path | None = None) -> str:
    """Run one setup command, its output appended to setup.log; EmulatorError on failure."""
    log = home / "setup.log"
    logger.info("pi4-emulated: %s", step)  # the CLI shows these: the first setup takes a while
    logger.debug("%s: %s", step, " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    with open(log, "a") as f:
        f.write(f"\n### {step}\n$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit {proc.returncode}"
        raise EmulatorError(f"pi4-emulated setup failed at '{step}': {last} (log: {log})")
    return proc.stdout


def _apt(home: Path, arch: str) -> list[str]:
    """apt-get options for a private per-architecture package list (no system state)."""
    d = home / "apt" / arch
    for sub in ("lists/partial", "cache/archives/partial"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    opts = {
        "APT::Architecture": arch,
        "APT::Architectures": arch,
        "Dir::State::Lists": d / "lists",
        "Dir::Cache": d / "cache",
        "Dir::State::status": "/dev/null",
        "APT::Install-Recommends": "0",
        "Acquire::Retries": "3",
    }
    if os.getuid() == 0:
        opts["APT::Sandbox::User"] = "root"
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]


def _apt_update(home: Path, arch: str) -> list[str]:
    opts = _apt(home, arch)
    # A broken third-party source should not stop us; missing packages are caught later.
    with contextlib.suppress(EmulatorError):
        _run(home, f"apt-get update ({arch})", ["apt-get", "-q", *opts, "update"])
    return opts


def _setup_qemu(home: Path) -> Path:
    qemu = home / "qemu" / "qemu-aarch64-static"
    if (home / "qemu" / ".complete").exists():
        return qemu
    logger.info("pi4-emulated: downloading qemu-user-static into %s", home)
    shutil.rmtree(home / "qemu", ignore_errors=True)
    dl = home / "qemu" / "dl"
    dl.mkdir(parents=True)
    host = _run(home, "dpkg --print-architecture", ["dpkg", "--print-architecture"]).strip()
    opts = _apt_update(home, host)
    _run(
        home,
        "download qemu-user-static",
        ["apt-get", "-q", *opts, "download", "qemu-user-static"],
        cwd=dl,
    )
    (deb,) = dl.glob("qemu-user-static_*.deb")
    _run(home, "unpack qemu-user-static", ["dpkg-deb", "-x", str(deb), str(dl / "x")])
    (dl / "x" / "usr" / "bin" / "qemu-aarch64-static").rename(qemu)
    shutil.rmtree(dl)
    _run(home, "qemu starts", [str(qemu), "-version"])
    (home / "qemu" / ".complete").touch()
    return qemu


def _setup_sysroot(home: Path, qemu: Path) -> tuple[Path, str]:
    sysroot = home / "sysroot"
    stamp = sysroot / ".complete"
    if stamp.exists():
        return sysroot, stamp.read_text().strip()
    logger.info("pi4-emulated: building the arm64 Debian sysroot")
    shutil.rmtree(sysroot, ignore_errors=True)
    debs = home / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    opts = _apt_update(home, "arm64")
    depends = _run(home, "find python3", ["apt-cache", *opts, "depends", "python3-minimal"])
    found = re.search(r"python(3\.\d+)-minimal", depends)
    if not found:
        raise EmulatorError(
            f"no arm64 python3-minimal in the Debian package lists (log: {home / 'setup.log'})"
        )
    pyver = found.group(1)
    want = [f"python{pyver}-minimal", f"libpython{pyver}-stdlib", *_DEBS]
    plan = _run(home, "resolve arm64 packages", ["apt-get", "-q", *opts, "-s", "install", *want])
    # "Inst libc6 (2.36-9+deb12u9 Debian:12/stable [arm64])" -> libc6=2.36-9+deb12u9
    pins = [f"{m[1]}={m[2]}" for m in re.finditer(r"^Inst (\S+) \((\S+)", plan, re.M)]
    _run(home, "download arm64 packages", ["apt-get", "-q", *opts, "download", *pins], cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        _run(home, f"unpack {deb.name}", ["dpkg-deb", "-x", str(deb), str(sysroot)])
    (libc,) = debs.glob("libc6_*.deb")
    glibc = re.match(r"libc6_2\.(\d+)", libc.name)
    (sysroot / ".glibc").write_text(glibc.group(1) if glibc else "17")
    shutil.rmtree(debs)
    _relativise_links(sysroot)
    _run(
        home,
        "emulated python starts",
        [
            str(qemu),
            "-cpu",
            CPU,
            "-L",
            str(sysroot),
            str(sysroot / "usr" / "bin" / f"python{pyver}"),
            "-c",
            "import platform; print(platform.machine())",
        ],
    )
    stamp.write_text(pyver)
    return sysroot, pyver


def _relativise_links(sysroot: Path) -> None:
    """Absolute links inside the sysroot (e.g. to /etc/python3.x) would resolve on the host."""
    for link in sysroot.rglob("*"):
        if not link.is_symlink():
            continue
        target = os.readlink(link)
        inside = sysroot / target.lstrip("/")
        if target.startswith("/") and (inside.exists() or inside.is_symlink()):
            link.unlink()
            link.symlink_to(os.path.relpath(inside, link.parent))


def _setup_root(home: Path, sysroot: Path, cpus: int) -> Path:
    root = home / "roots" / f"cpu{cpus}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for entry in sysroot.iterdir():
        if entry.name not in ("proc", "sys") and not entry.name.startswith("."):
            (root / entry.name).symlink_to(os.path.relpath(entry, root))
    (root / "proc").mkdir()
    (root / "proc" / "cpuinfo").write_text(_pi4_cpuinfo(cpus))
    _write_tree(root / "sys" / "devices" / "system" / "cpu", _pi4_sys_cpu(cpus))
    (root / ".complete").touch()
    return root


def _pi4_cpuinfo(cpus: int) -> str:
    core = (
        "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        "CPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    )
    board = "Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n"
    return "".join(core.format(i=i) for i in range(cpus)) + board


def _pi4_sys_cpu(cpus: int) -> dict[str, str]:
    """Files of /sys/devices/system/cpu for a 4-core BCM2711 (L1d 32K, L1i 48K, L2 1M)."""
    span = "0" if cpus == 1 else f"0-{cpus - 1}"
    mask = f"{(1 << cpus) - 1:x}"
    files = {
        "possible": span,
        "present": span,
        "online": span,
        "offline": "",
        "kernel_max": str(cpus - 1),
    }
    for i in range(cpus):
        c, own = f"cpu{i}", f"{1 << i:x}"
        files |= {
            f"{c}/online": "1",
            f"{c}/cpu_capacity": "1024",
            f"{c}/cpufreq/cpuinfo_max_freq": "1500000",
            f"{c}/cpufreq/cpuinfo_min_freq": "600000",
            f"{c}/cpufreq/scaling_cur_freq": "1500000",
            f"{c}/regs/identification/midr_el1": "0x00000000410fd083",
            f"{c}/regs/identification/revidr_el1": "0x0000000000000000",
        }
        for key, value in (
            ("core_id", str(i)),
            ("physical_package_id", "0"),
            ("cluster_id", "0"),
            ("die_id", "0"),
        ):
            files[f"{c}/topology/{key}"] = value
        for key in ("core_siblings", "package_cpus", "cluster_cpus", "die_cpus"):
            files |= {f"{c}/topology/{key}_list": span, f"{c}/topology/{key}": mask}
        for key in ("thread_siblings", "core_cpus"):
            files |= {f"{c}/topology/{key}_list": str(i), f"{c}/topology/{key}": own}
        caches = (
            (1, "Data", "32K", 2, 256, str(i), own),
            (1, "Instruction", "48K", 3, 256, str(i), own),
            (2, "Unified", "1024K", 16, 1024, span, mask),
        )
        for index, (level, kind, size, ways, sets, shared, shared_map) in enumerate(caches):
            d = f"{c}/cache/index{index}"
            files |= {
                f"{d}/level": str(level),
                f"{d}/type": kind,
                f"{d}/size": size,
                f"{d}/ways_of_associativity": str(ways),
                f"{d}/number_of_sets": str(sets),
                f"{d}/coherency_line_size": "64",
                f"{d}/shared_cpu_list": shared,
                f"{d}/shared_cpu_map": shared_map,
            }
    return files


def _write_tree(base: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def _setup_wheels(home: Path, sysroot: Path, pyver: str) -> Path:
    import numpy
    import onnxruntime

    pins = (
        f"onnxruntime=={onnxruntime.__version__}",
        f"numpy=={numpy.__version__.split('.')[0]}.*",
    )
    key = "-".join((LAYOUT, pyver, *pins)).replace("=", "").replace("*", "x")
    site = home / "wheels" / key
    if (site / ".complete").exists():
        return site
    logger.info("pi4-emulated: installing aarch64 wheels %s", ", ".join(pins))
    shutil.rmtree(site, ignore_errors=True)
    glibc = int((sysroot / ".glibc").read_text())
    platforms = [f"manylinux_2_{g}_aarch64" for g in range(glibc, 16, -1)] + [
        "manylinux2014_aarch64"
    ]
    _run(
        home,
        "pip install aarch64 wheels",
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-input",
            "--disable-pip-version-check",
            "--no-compile",
            "--target",
            str(site),
            "--only-binary=:all:",
            "--python-version",
            pyver,
            "--implementation",
            "cp",
            "--abi",
            f"cp{pyver.replace('.', '')}",
            *(arg for p in platforms for arg in ("--platform", p)),
            *pins,
        ],
    )
    (site / ".complete").touch()
    return site
