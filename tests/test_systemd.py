"""deploy/systemd/hub.service: valid for systemd, sandboxed, and the hub runs inside its limits."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest
from harness import ROOT, HubProcess, skip_or_fail, sse_items, text_of

UNIT = ROOT / "deploy" / "systemd" / "hub.service"
INSTALLED_HUB = "/opt/hub/.venv/bin/hub"
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65


def service_section() -> dict[str, list[str]]:
    """The [Service] keys of the unit, each with every value it is given."""
    keys: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def unit_with_real_exec(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's `hub` (verify needs it to exist)."""
    hub = Path(sys.executable).with_name("hub")
    if not hub.exists():
        found = shutil.which("hub")
        assert found, "the hub console script is not installed"
        hub = Path(found)
    text = UNIT.read_text(encoding="utf-8")
    assert INSTALLED_HUB in text, f"ExecStart no longer uses {INSTALLED_HUB}; update this test"
    copy = tmp_path / "hub.service"
    copy.write_text(text.replace(INSTALLED_HUB, str(hub)), encoding="utf-8")
    return copy


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        skip_or_fail("systemd-analyze is not installed (Debian package: systemd)")
    assert tool is not None
    return tool


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = systemd_analyze()
    unit = unit_with_real_exec(tmp_path)
    done = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on mere warnings (an unknown key, a key in the wrong section): fail on those too.
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if unit.name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit whose ExecStart does not exist is rejected."""
    tool = systemd_analyze()
    broken = tmp_path / "hub.service"
    broken.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED_HUB, str(tmp_path / "no-such-hub")))
    done = subprocess.run([tool, "verify", "--man=no", str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "no-such-hub" in done.stdout + done.stderr


def test_unit_sandbox_exposure_is_low(tmp_path: Path) -> None:
    tool = systemd_analyze()
    unit = unit_with_real_exec(tmp_path)
    # The threshold is on systemd's 0-100 scale: 20 is an exposure of 2.0, the top of "OK".
    done = subprocess.run(
        [tool, "security", "--offline=yes", "--threshold=20", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


def test_unit_runs_hub_unprivileged_with_secrets_in_an_environment_file() -> None:
    keys = service_section()
    assert keys["ExecStart"][0].split()[:2] == [INSTALLED_HUB, "run"]
    assert keys["User"][0] not in ("", "root", "0")
    assert keys["EnvironmentFile"], "secrets come from an EnvironmentFile"
    assert keys["Restart"] == ["on-failure"]
    # A configuration mistake (exit 2) is not retried in a loop.
    assert "2" in keys["RestartPreventExitStatus"][0].split()
    # The hub exits within 10 s of SIGTERM; systemd must not kill it sooner.
    stop = keys["TimeoutStopSec"][0]
    assert stop.endswith("s") and int(stop[:-1]) >= 10
    workdir = keys["WorkingDirectory"][0]
    assert workdir in " ".join(keys["ReadWritePaths"]), "the data directory must stay writable"
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "MemoryDenyWriteExecute": "yes",
    }.items():
        assert keys.get(key) == [value], f"{key}={value} expected"


WRAPPER = textwrap.dedent(
    """
    import ctypes, os, sys

    # The two process-wide limits of the unit that the kernel can impose without systemd:
    # NoNewPrivileges and MemoryDenyWriteExecute (PR_SET_MDWE, Linux 6.3+).
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({nnp}, 1, 0, 0, 0) != 0 or libc.prctl({mdwe}, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl failed: errno {{ctypes.get_errno()}}")
    os.execv(sys.executable, [sys.executable, "-m", "hub", *sys.argv[1:]])
    """
).format(nnp=PR_SET_NO_NEW_PRIVS, mdwe=PR_SET_MDWE)


def mdwe_supported() -> bool:
    probe = "import ctypes, sys; sys.exit(0 if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0 else 1)"
    return subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0


@pytest.mark.slow
async def test_hub_serves_under_the_units_memory_and_privilege_limits(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux") or not mdwe_supported():
        pytest.skip("the kernel cannot deny writable-executable memory to a process (Linux 6.3+ needed)")
    # The check itself works: writable-executable memory is refused under the same prctl.
    mmap_check = (
        "import ctypes, mmap, sys\n"
        f"assert ctypes.CDLL(None).prctl({PR_SET_MDWE}, 1, 0, 0, 0) == 0\n"
        "try: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except OSError: sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    assert subprocess.run([sys.executable, "-c", mmap_check], timeout=30).returncode == 0

    wrapper = tmp_path / "limited.py"
    wrapper.write_text(WRAPPER, encoding="utf-8")
    proc = HubProcess([str(wrapper), "run"], {"HUB_HTTP__PORT": "0"}, tmp_path)
    try:
        url = await proc.start()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200, await resp.text()
            async with http.post(f"{url}/api/web/chat", json={"session": "unit", "text": "/help"}) as resp:
                assert resp.status == 200
                assert "/help" in text_of(await sse_items(resp))
        assert proc.terminate(timeout=12) == 0, proc.logs()
    finally:
        proc.kill()
