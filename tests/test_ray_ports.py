"""Where the compose service `ray-head` listens, and who may use what listens (issue 33), for real.

`docker/entrypoint.sh ray-head` runs here as compose runs it (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN,
RAY_PORT=6379, empty RAY_ADDRESS and RAY_NODE_IP, usage stats off) with the Ray of this session
(`nox -s tests-ray`: ray[tune]==2.60.0, the current image's), inside a private network namespace
(`unshare -rn`) that holds the loopback and a stand-in private interface, 10.99.0.2 (a veth pair
with both ends inside): a cluster machine's host network, which nothing outside the namespace can
reach, so no port of this test listens on this machine's own interfaces. The head's processes are
found by pid and their listening sockets read from /proc; everything is stopped by pid. Skipped
where unprivileged network namespaces are not allowed, or without Ray.

What it found (and docs/DOCKER.md says): Ray listens on the wildcard address (GCS, node manager,
object manager) and on the node's address (runtime-env agent), whatever --node-ip-address says;
so on a real network every port is reachable, and token authentication is what guards them.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from builders import kill_tree, process_tree  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).with_name("ray")
LAN = "10.99.0.2"  # the stand-in private interface inside the namespace
LOOPBACK = {"127.0.0.1", "::1"}
WILDCARD = {"0.0.0.0", "::"}
# lo up, and a veth pair whose ends are both in the namespace, one of them this node's "LAN" address.
NAMESPACE = (
    "ip link set lo up && ip link add top0 type veth peer name top1 && "
    f"ip addr add {LAN}/24 dev top0 && ip addr add 10.99.0.1/24 dev top1 && "
    "ip link set top0 up && ip link set top1 up && ip route add default via 10.99.0.1 dev top0 && "
    'exec "$@"'
)


def _in_namespace(argv):
    return ["unshare", "-rn", "sh", "-c", NAMESPACE, "sh", *argv]


def _namespaces_work():
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    done = subprocess.run(_in_namespace(["true"]), capture_output=True, timeout=30)
    return done.returncode == 0


def _listening(pid):
    """{socket inode: (address, port)} of the TCP sockets listening in the network namespace of ``pid``."""
    found = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
            found[fields[9]] = (socket.inet_ntop(family, raw), int(port, 16))
    return found


def _program(pid):
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in argv if w]
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0]
    names = [Path(w).name for w in words[:3]]
    return next((n for n in names if n in {"gcs_server", "raylet", "ray"}), " ".join(names))


def sockets_of(root_pid):
    """[(address, port, program)] that the processes below ``root_pid`` listen on."""
    rows = set()
    pids = process_tree(root_pid)
    listening = _listening(root_pid)
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in listening:
                rows.add((*listening[link[8:-1]], _program(pid)))
    return sorted(rows, key=lambda row: (row[1], row[0]))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`docker/entrypoint.sh ray-head` in the namespace, as compose starts it; stopped by pid."""
    if not _namespaces_work():
        pytest.skip("unprivileged network namespaces (unshare -rn, ip) are not available here")
    work = tmp_path_factory.mktemp("ray-head")
    temp = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))  # Ray's socket paths: at most 107 bytes
    token = secrets.token_hex(32)
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "RAY_NODE_IP", "RAY_AUTH_TOKEN_PATH", "PYTHONPATH"):
        env.pop(name, None)
    env.update(
        PATH=f"{RAY_BIN.parent}{os.pathsep}{env['PATH']}", TOP_HOME=str(REPO), HOME=str(work / "home"),
        HF_HOME=str(work / "hf"), RAY_TMPDIR=str(temp), RAY_USAGE_STATS_ENABLED="0",
        # what docker-compose.yml passes to ray-head
        RAY_PORT="6379", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_ADDRESS="", RAY_NODE_IP="",
    )
    log = open(work / "head.log", "wb")
    process = subprocess.Popen(_in_namespace(["bash", str(REPO / "docker" / "entrypoint.sh"), "ray-head",
                                              "--num-cpus=1", "--num-gpus=0"]),
                               cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        rows = []
        # Up when the GCS, the raylet and the runtime-env agent all listen.
        while time.monotonic() < deadline and process.poll() is None:
            rows = sockets_of(process.pid)
            programs = {program for _, _, program in rows}
            if any(port == 6379 for _, port, _ in rows) and "raylet" in programs and any(
                    "RuntimeEnvAgent" in p for p in programs):
                break
            time.sleep(1)
        else:
            raise AssertionError("ray-head did not come up: " + (work / "head.log").read_text(errors="replace")[-3000:])
        time.sleep(2)  # anything that opens just after the agent
        yield {"pid": process.pid, "token": token, "env": env, "log": work / "head.log",
               "rows": sockets_of(process.pid)}
    finally:
        kill_tree(process.pid)
        process.wait(timeout=30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _in_head_namespace(head, argv, **env):
    """Run ``argv`` in the head's user and network namespaces (as its owner, no privilege needed)."""
    return subprocess.run(["nsenter", "--user", "--net", "--preserve-credentials", "-t", str(head["pid"]), *argv],
                          env=dict(head["env"], **env), capture_output=True, text=True, timeout=120)


def test_ray_head_listens_where_measured(head):
    """Every port of the head, with its process: the GCS on 6379, the raylet's two, the runtime-env
    agent's. Each is on the wildcard address or the node's own: beyond the loopback, on every interface."""
    rows = head["rows"]
    table = "\n".join(f"{address:>15} {port:<6} {program}" for address, port, program in rows)
    print("\nray-head's listening sockets (Ray 2.60.0, inside the namespace):\n" + table)
    assert rows, table
    assert {address for address, _, _ in rows} <= WILDCARD | LOOPBACK | {LAN}, table
    assert any(port == 6379 and program == "gcs_server" for _, port, program in rows), table
    beyond = [row for row in rows if row[0] not in LOOPBACK]
    assert {program for _, _, program in beyond} <= {"gcs_server", "raylet", "ray::RuntimeEnvAgent"}, table


def test_what_listens_beyond_the_loopback_asks_for_the_token(head):
    """The head's ports are reachable from the network (the LAN address), so they must authenticate: the
    GCS refuses a wrong token and serves the right one; the runtime-env agent answers 401 without one."""
    address = f"{LAN}:6379"
    wrong = _in_head_namespace(head, [str(RAY_BIN), "status", f"--address={address}"], RAY_AUTH_TOKEN="0" * 64)
    said = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 and "AuthenticationError" in said, said[-2000:]
    # The GCS can accept the token a few seconds before the raylet has reported the node's resources
    # ("No cluster status"): ask again until it has, as `ray status` itself advises.
    deadline = time.monotonic() + 60
    while True:
        right = _in_head_namespace(head, [str(RAY_BIN), "status", f"--address={address}"])
        if "No cluster status" not in right.stdout or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert right.returncode == 0 and "Active:" in right.stdout, (right.stdout + right.stderr)[-2000:]
    agents = [port for _, port, program in head["rows"] if program == "ray::RuntimeEnvAgent"]
    assert agents
    probe = ("import sys, urllib.request, urllib.error\n"
             "try:\n"
             "    urllib.request.urlopen(sys.argv[1], data=b'', timeout=10)\n"
             "    print(200)\n"
             "except urllib.error.HTTPError as e:\n"
             "    print(e.code)\n")
    for port in agents:
        answer = _in_head_namespace(head, [sys.executable, "-c", probe,
                                           f"http://{LAN}:{port}/get_or_create_runtime_env"])
        assert answer.stdout.strip() == "401", answer.stdout + answer.stderr


def test_the_head_was_started_as_the_service_starts_it(head):
    """The command line is the entrypoint's (the static tests pin it): ray start --head on RAY_PORT."""
    argv = Path(f"/proc/{head['pid']}/cmdline").read_bytes().split(b"\0")
    words = [w.decode() for w in argv if w]
    assert Path(words[1]).name == "ray" and words[2:] == [
        "start", "--block", "--disable-usage-stats", "--head", "--port=6379", "--include-dashboard=false",
        "--num-cpus=1", "--num-gpus=0"], words
