"""The installed form (issue 8): a wheel built from this checkout, installed with its dependencies
into a fresh virtual environment outside the checkout, runs a federation from a directory that is
not the checkout, with the installed `hedui` only. A file the program needs that the wheel lacks
fails here.

The federations run in a network namespace of their own (`unshare -n`, loopback only), so the
fixed ports of the README's example cannot collide with anything on the host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs the wheel into fresh venvs: scripts/test and CI run them

REPO = Path(__file__).resolve().parents[2]
NAMESPACE_TOOLS = ("unshare", "ip", "jq", "awk")


def _run(cmd: list[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess[str]:
    # A session of its own: on a timeout every process it started (servers in the background
    # of a namespace script included) is killed, never left running after the test.
    with subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.PIPE if input is not None else None, text=True,
                          start_new_session=True) as child:
        try:
            stdout, stderr = child.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            raise AssertionError(f"{cmd[:4]} did not finish within {timeout:g} s") from None
    proc = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[:4]} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a fresh virtual environment holding only the wheel and its dependencies."""
    missing = [tool for tool in NAMESPACE_TOOLS if shutil.which(tool) is None]
    if missing:  # scripts/test installs them; a run without them must not pass quietly
        pytest.fail(f"these tests need {', '.join(missing)} (scripts/test installs them)")
    root = tmp_path_factory.mktemp("installed")
    assert not root.resolve().is_relative_to(REPO), "the environment must live outside the checkout"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
          "-w", root / "dist", REPO])
    wheels = sorted((root / "dist").glob("hedui-*.whl"))
    assert len(wheels) == 1, wheels
    _run([sys.executable, "-m", "venv", root / "venv"])
    _run([root / "venv/bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheels[0]])
    return root / "venv/bin"


def _env(bin_dir: Path) -> dict[str, str]:
    """A shell environment that finds the installed `hedui` first and nothing of the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    return env


def _in_namespace(script: str, cwd: Path, bin_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a bash script in a new network namespace with only loopback; background jobs are stopped at exit."""
    stop = "trap 'status=$?; kill $(jobs -p) 2>/dev/null || true; wait; exit $status' EXIT"
    wrapped = f"ip link set lo up\n{stop}\nset -euo pipefail\n{script}\n"
    return _run(["unshare", "-n", "bash", "-c", wrapped], cwd=cwd, env=_env(bin_dir), timeout=timeout)


def readme_block(heading: str) -> str:
    """The first ```sh block of the README after `heading`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, f"no sh block after {heading!r}"
    return match.group(1)


def test_the_wheel_runs_from_outside_the_checkout_and_carries_configs_own_files(installed: Path, tmp_path: Path) -> None:
    """The installed package is imported from the environment, reports its version, and ships config/'s files
    (catalogue, policy, example standards) unchanged."""
    probe = ("import importlib.metadata, node, node.domain.catalogue as c;"
             "print(node.__file__); print(importlib.metadata.version('hedui'));"
             "print(c.shipped('catalogue.toml')); print(c.shipped('policy.toml')); print(c.shipped('standards'))")
    lines = _run([installed / "python", "-c", probe], cwd=tmp_path, env=_env(installed)).stdout.split()
    package_file, version, catalogue, policy, standards = lines
    assert not Path(package_file).resolve().is_relative_to(REPO)
    assert Path(package_file).resolve().is_relative_to(installed.parent.resolve())
    assert Path(catalogue).read_bytes() == (REPO / "config/catalogue.toml").read_bytes()
    assert Path(policy).read_bytes() == (REPO / "config/policy.toml").read_bytes()
    examples = sorted((REPO / "config/standards").glob("*.toml"))
    assert examples and [p.name for p in sorted(Path(standards).glob("*.toml"))] == [p.name for p in examples]
    assert all((Path(standards) / p.name).read_bytes() == p.read_bytes() for p in examples)
    assert _run([installed / "hedui", "--version"], cwd=tmp_path, env=_env(installed)).stdout.strip() == f"hedui {version}"


def test_the_readmes_federation_runs_as_written_and_shows_answers_from_another_province(installed: Path,
                                                                                       tmp_path: Path) -> None:
    """The README's hand-built federation, run literally, shows Guangdong's signed answers to Sichuan."""
    out = _in_namespace(readme_block("## A federation by hand"), tmp_path, installed).stdout
    assert "routing: 44 OK" in out
    assert "province 44 (Guangdong): signature valid" in out
    shown = re.search(r"The routed call prints.*?```\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    assert shown is not None
    for row in re.findall(r"^\s+(#\d+\s+\S+\s+[A-Z_]+)\s", shown.group(1), re.M):
        assert re.search(r"\s+".join(map(re.escape, row.split())), out), f"README shows {row!r}, the run did not"
    assert "province 44: valid" in out  # answer verify on the saved direct answer
    assert re.search(r"household of \d+ in region 51\d{4}, \d{4}-\d{2} \(dibao\): (NOT_)?ELIGIBLE", out)
    assert re.search(r"provinces: .*44 Guangdong OK", out)
    assert re.search(r"decision record valid: (NOT_)?ELIGIBLE, decided by province 51", out)
    assert re.search(r"c-[0-9a-f]+: REVOKED", out)
    assert re.search(r"ledger intact: [0-9]+ entries", out)


FEDERATION = """
hedui pki init --pki pki
hedui pki issue --pki pki --coordinator --loopback
hedui pki issue --pki pki --province 32 --loopback
hedui pki issue --pki pki --province 41 --loopback
hedui coordinator init --pki pki --listen 127.0.0.1:7400 --data-dir run/coord --config run/coord.toml
hedui node init --pki pki --province 32 --listen 127.0.0.1:7432 --data-dir run/32 --config run/32.toml --coordinator 127.0.0.1:7400
hedui node init --pki pki --province 41 --listen 127.0.0.1:7441 --data-dir run/41 --config run/41.toml --coordinator 127.0.0.1:7400
hedui synth --provinces 32,41 --households 30 --seed 7 --out data
hedui ingest --config run/32.toml data/32.csv
hedui ingest --config run/41.toml data/41.csv
hedui coordinator serve --config run/coord.toml 2>> run/coord.log &
hedui node serve --config run/32.toml 2>> run/32.log &
hedui node serve --config run/41.toml 2>> run/41.log &
hedui coordinator wait --config run/coord.toml
hedui node wait --config run/32.toml
hedui node wait --config run/41.toml
id=$(awk -F, '$3 == "41" && $4 == "32" {print $2; exit}' data/members.csv)
hedui consent grant --config run/41.toml --id "$id" --purpose dibao --json > consent.json
hedui verify --config run/41.toml --consent "$(jq -r .consent_id consent.json)" --id "$id" --purpose dibao \
     --check 'income.wage_monthly<=300000' --check 'deposit.balance_total<=2000000' --json --save routed.json > routed.out
hedui answer verify --pki pki routed.json > verified.out
hedui node status --config run/32.toml --json > status.json
"""


def test_a_two_province_federation_runs_with_the_installed_hedui_only(installed: Path, tmp_path: Path) -> None:
    """pki, init, ingest, serve, consent grant, a routed `verify --json` and `answer verify`, all from the wheel."""
    _in_namespace(FEDERATION, tmp_path, installed)
    routed = json.loads((tmp_path / "routed.out").read_text())
    assert routed["routing"] == {"32": "OK"}
    (answer,) = routed["answers"]
    assert answer["province"] == "32" and answer["signature_valid"] is True
    assert {r["check"] for r in answer["results"]} == {"income.wage_monthly<=300000", "deposit.balance_total<=2000000"}
    assert all(r["outcome"] in ("SATISFIED", "NOT_SATISFIED") for r in answer["results"])
    assert "province 32: valid" in (tmp_path / "verified.out").read_text()
    version = _run([installed / "python", "-c", "import node; print(node.__version__)"], cwd=tmp_path,
                   env=_env(installed)).stdout.strip()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["version"] == version and status["subjects"] > 0
    serving = [json.loads(line) for line in (tmp_path / "run/32.log").read_text().splitlines()
               if '"serving"' in line]
    assert serving and serving[0]["version"] == version


USER_TEST = """
from pathlib import Path
from node.testing import run_cluster
from node.synth import generate

out = Path("data")
generate(["44", "51"], households=10, seed=3, out=out)
with run_cluster(["51", "44"], data={"44": out / "44.csv"}) as fed:
    print(sorted(fed.addresses))
"""


def test_run_cluster_works_in_a_users_own_tests(installed: Path, tmp_path: Path) -> None:
    """`node.testing.run_cluster`, imported from the installed package, starts a federation (catalogue and policy found)."""
    (tmp_path / "user_test.py").write_text(USER_TEST)
    out = _run([installed / "python", "user_test.py"], cwd=tmp_path, env=_env(installed), timeout=120).stdout
    assert "'44'" in out and "'51'" in out and "'coordinator'" in out


WEB_PROBE = """
import socket, sys, threading, urllib.request
from pathlib import Path
import uvicorn
from node.web.app import create_app
from node.web.desk import Desk
desk = Desk(Path(sys.argv[1]))
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(8)
server = uvicorn.Server(uvicorn.Config(create_app(desk), log_level="warning"))
threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
base = f"http://127.0.0.1:{sock.getsockname()[1]}"
page = urllib.request.urlopen(base + "/login").read().decode()
css = urllib.request.urlopen(base + "/static/style.css").read().decode()
print("login-form" if 'name="csrf"' in page and "登录" in page else "no-form", "print-css" if "@media print" in css else "no-css")
server.should_exit = True
"""


def test_the_wheel_carries_the_web_applications_templates_and_static_files(installed: Path, tmp_path: Path) -> None:
    """From the wheel: `hedui web user add` creates an account and the app serves its login page and print stylesheet."""
    make = "import sys; from pathlib import Path; from node.testing import build_federation; " \
           "print(build_federation(Path(sys.argv[1]), ['51']).configs['51'])"
    config = _run([installed / "python", "-c", make, tmp_path / "fed"], cwd=tmp_path, env=_env(installed)).stdout.strip()
    added = _run([installed / "hedui", "web", "user", "add", "--config", config, "--name", "audrey", "--role", "auditor",
                  "--password-stdin"], cwd=tmp_path, env=_env(installed), input="a long enough password\n")
    assert added.stdout.startswith("account w")
    served = _run([installed / "python", "-c", WEB_PROBE, config], cwd=tmp_path, env=_env(installed))
    assert served.stdout.split() == ["login-form", "print-css"]
