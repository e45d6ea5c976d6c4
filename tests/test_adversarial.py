"""The daemon attacked as a local adversary would: one test per attack, a real daemon on the tiny test model, real
sockets, real files, real other users where the machine allows creating one.

Each test names the hole it closes (issue 19) and is written so that it fails where the hole is open. Test names
start with the area they attack (socket_, token_, tcp_, allow_read_, status_, images_, meetings_), so the next
feature (an HTTP endpoint, conversations, a remote engine) can be attacked the same way by adding its area here:
squat what it listens on, race what it reads, feed it what it does not expect, and check the status and the
message (one line, no heap addresses, nothing about what the client may not see).
"""
from __future__ import annotations

import hashlib
import io
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc
import numpy as np
import pytest
import soundfile
from PIL import EpsImagePlugin, Image

from _common import start_daemon
from conftest import wav_bytes
from documents_pdfs import make_report
from disk_full import fill_disk
from pulse_mic import PulseMic, PulseUnavailable
from omnid.clients.client import DaemonNotRunning, OmniClient, text
from omnid.daemon.config import private_dir
from omnid.modalities.images import MAX_PIXELS, decode_image
from omnid.proto import omnid_pb2 as pb
from omnid.proto import omnid_pb2_grpc

# -- helpers ----------------------------------------------------------------------------------------------------


def _model_flags(test_model) -> list[str]:
    return ["--model", str(test_model.text), "--mmproj", str(test_model.mmproj)]


def serve_refused(tmp: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    """Run `omnid serve` expecting it to refuse at start-up: exit 2, one line on stderr (returned), no traceback.
    A daemon that starts instead is killed and the test fails."""
    cmd = [sys.executable, "-m", "omnid.daemon", "serve", "--data-dir", str(tmp / "data"), "--cache-disk", "off",
           "--threads", "1", "--ctx", "1024", *flags]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=40,
                                env={**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"`omnid serve {' '.join(flags)}` started instead of refusing")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("omnid: error: "), result.stderr
    return lines[0]


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__"):
            list(result)  # type: ignore[call-overload]
    return info.value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Listener:
    """A plain Unix socket that counts who connects: a squatter's trap, or a stand-in for someone's socket."""

    def __init__(self, path: Path, mode: int = 0o600) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, mode)
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, test_model) -> Iterator[dict]:
    """A daemon started the way the attacks below need: its socket and token in folders that already exist
    with mode 0755 (neither may be chmodded), TCP with a token, one folder it may read (`allowed`) and one
    outside every allowed folder (`outside`, not under pytest's temp folder, which the daemon may read)."""
    tmp = tmp_path_factory.mktemp("adversarial")
    for folder in ("run", "tokens", "allowed"):
        (tmp / folder).mkdir()
        os.chmod(tmp / folder, 0o755)
    outside = Path(tempfile.mkdtemp(prefix="omnid-outside-"))
    port = free_port()
    model = {"model": str(test_model.text), "mmproj": str(test_model.mmproj), "backend": "auto"}
    process = start_daemon(tmp, model, ["--threads", "1", "--ctx", "4096", "--cache-disk", "off",
                                        "--allow-read", str(tmp / "allowed"), "--tcp", f"127.0.0.1:{port}",
                                        "--token-file", str(tmp / "tokens" / "token")])
    yield {"process": process, "tmp": tmp, "allowed": tmp / "allowed", "outside": outside, "port": port,
           "token": (tmp / "tokens" / "token").read_text().strip()}
    process.stop()
    shutil.rmtree(outside, ignore_errors=True)


@pytest.fixture()
def omni(hostile) -> Iterator[OmniClient]:
    with OmniClient(f"unix:{hostile['process'].socket}") as c:
        yield c


# -- socket_: squatting, replacing, deleting ---------------------------------------------------------------------

def test_socket_client_refuses_a_folder_others_can_write(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o777)
    trap = Listener(folder / "omnid.sock")
    try:
        with pytest.raises(PermissionError) as info:
            OmniClient(f"unix:{trap.path}", connect_timeout=1)
    finally:
        trap.close()
    assert str(folder) in str(info.value) and "other users can write" in str(info.value)
    assert trap.connections == 0  # refused before connecting: nothing was sent


def test_socket_client_refuses_a_socket_others_can_connect_to(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    trap = Listener(folder / "omnid.sock", mode=0o777)
    try:
        with pytest.raises(PermissionError) as info:
            OmniClient(f"unix:{trap.path}", connect_timeout=1)
    finally:
        trap.close()
    assert str(trap.path) in str(info.value) and "0777" in str(info.value)
    assert trap.connections == 0


def test_socket_client_without_its_folder_does_not_wait_for_one(tmp_path: Path) -> None:
    """Waiting for a socket to appear in a folder nobody checked is how a squatter gets in after the check."""
    with pytest.raises(DaemonNotRunning) as info:
        OmniClient(f"unix:{tmp_path / 'missing' / 'omnid.sock'}", connect_timeout=30)
    assert "does not exist" in str(info.value)


def test_socket_daemon_refuses_a_folder_others_can_write_and_leaves_it(tmp_path: Path, test_model) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o777)
    line = serve_refused(tmp_path, *_model_flags(test_model), "--socket", str(folder / "omnid.sock"))
    assert str(folder) in line and "other users can write" in line
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 and not any(folder.iterdir())


def test_socket_existing_folder_keeps_its_mode(hostile) -> None:
    """--socket D/x.sock used to chmod D to 0700, even a shared D (as root, --socket /tmp/x.sock: /tmp)."""
    assert stat.S_IMODE((hostile["tmp"] / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE(hostile["process"].socket.stat().st_mode) == 0o600


def test_socket_only_folders_the_daemon_makes_are_made_private(tmp_path: Path) -> None:
    """The rule behind the two tests around this one (the daemon's socket, token and data folders all go through
    it): a missing folder is made 0700, whatever the umask; an existing one keeps its mode."""
    made = private_dir(tmp_path / "made")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    assert stat.S_IMODE(private_dir(shared).stat().st_mode) == 0o1777


def test_socket_regular_file_is_not_deleted(tmp_path: Path, test_model) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("my notes")
    line = serve_refused(tmp_path, *_model_flags(test_model), "--socket", str(precious))
    assert str(precious) in line and "not a socket" in line
    assert precious.read_text() == "my notes"


def test_socket_second_daemon_refuses_and_leaves_the_live_socket(hostile, tmp_path: Path, test_model) -> None:
    live = hostile["process"].socket
    line = serve_refused(tmp_path, *_model_flags(test_model), "--socket", str(live))
    assert "already listening" in line and str(live) in line
    assert live.exists()
    with OmniClient(f"unix:{live}") as c:  # the first daemon is still reachable
        assert c.status().model_name


def test_socket_stale_socket_of_ours_is_replaced(tmp_path: Path, test_model) -> None:
    """The one socket a starting daemon may remove: its own user's, that nobody answers on."""
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(folder / "omnid.sock"))
    stale.close()  # bound, never listening: connecting is refused, as with a daemon that died
    process = start_daemon(tmp_path, {"model": str(test_model.text), "mmproj": "", "backend": "auto"},
                           ["--threads", "1", "--ctx", "1024", "--cache-disk", "off"])
    try:
        with OmniClient(f"unix:{process.socket}") as c:
            assert c.status().model_name
    finally:
        process.stop()
    assert not process.socket.exists()  # its own socket, removed on the way out


SQUATTER = "omnid-squatter"

_SQUAT = r"""
import os, select, socket, sys
folder = sys.argv[1]
os.mkdir(folder, 0o755)                       # first to create the victim's folder
path = os.path.join(folder, "omnid.sock")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)                         # anyone may connect: the victim too
s.listen(8)
print("ready", flush=True)
connections = 0
while True:
    ready, _, _ = select.select([s, sys.stdin], [], [])
    if sys.stdin in ready:
        break
    conn, _ = s.accept()
    connections += 1
    conn.close()
print(connections, flush=True)
"""


@pytest.fixture()
def squatter() -> Iterator[pwd.struct_passwd]:
    """A second, unprivileged user on this machine (created once; needs root and useradd)."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd to create a second user")
    try:
        user = pwd.getpwnam(SQUATTER)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SQUATTER],
                              capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot create a second user here: {made.stderr.strip()}")
        user = pwd.getpwnam(SQUATTER)
    yield user


def test_socket_another_user_squats_the_default_folder(squatter, test_model, tmp_path: Path) -> None:
    """Another user creates the victim's default socket folder first (0755) and listens in it with a 0777
    socket. The victim's client must not connect (it used to: `omni ask` handed him the prompt and exited 0) and
    the victim's daemon must not start there (nor take the folder over)."""
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else shutil.which("python3")
    if not python or python.startswith("/root"):
        pytest.skip("no python the second user can run")
    shared = Path(tempfile.mkdtemp(prefix="omnid-shared-"))  # stands for /tmp: sticky and writable by all
    os.chmod(shared, 0o1777)
    folder = shared / "omnid"  # XDG_RUNTIME_DIR=shared: the default socket is shared/omnid/omnid.sock
    attacker = subprocess.Popen([python, "-c", _SQUAT, str(folder)], user=squatter.pw_uid, group=squatter.pw_gid,
                                extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout is not None and attacker.stdin is not None
        assert attacker.stdout.readline().strip() == "ready"
        env = {k: v for k, v in os.environ.items() if k != "OMNID_SOCKET"}
        env["XDG_RUNTIME_DIR"] = str(shared)
        asked = subprocess.run([sys.executable, "-m", "omnid.clients.cli", "ask", "my secret prompt"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert asked.returncode != 0
        assert str(folder) in asked.stderr and f"uid {squatter.pw_uid}" in asked.stderr, asked.stderr
        line = serve_refused(tmp_path, *_model_flags(test_model), env=env)
        assert str(folder) in line and f"uid {squatter.pw_uid}" in line
        assert folder.stat().st_uid == squatter.pw_uid and stat.S_IMODE(folder.stat().st_mode) == 0o755
        attacker.stdin.write("stop\n")
        attacker.stdin.flush()
        assert attacker.stdout.readline().strip() == "0"  # nobody connected to the squatter
    finally:
        attacker.kill()
        attacker.wait()
        shutil.rmtree(shared, ignore_errors=True)


def test_socket_another_users_link_as_the_folder_is_refused(squatter, tmp_path: Path) -> None:
    """The squatter makes the victim's folder name a link (to a folder the victim would accept): he can point
    it at his own folder between the victim's check and connect, so the link itself is refused."""
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else shutil.which("python3")
    if not python or python.startswith("/root"):
        pytest.skip("no python the second user can run")
    shared = Path(tempfile.mkdtemp(prefix="omnid-shared-"))
    os.chmod(shared, 0o1777)
    folder = shared / "omnid"
    try:
        made = subprocess.run([python, "-c", "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(shared),
                               str(folder)], user=squatter.pw_uid, group=squatter.pw_gid, extra_groups=[])
        assert made.returncode == 0
        with pytest.raises(PermissionError) as info:
            OmniClient(f"unix:{folder / 'omnid.sock'}", connect_timeout=1)
        assert str(folder) in str(info.value) and "link" in str(info.value)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_socket_another_users_socket_is_refused(squatter, tmp_path: Path) -> None:
    """Even in a sticky shared folder (like /tmp, where anyone may create names), a socket another user made is
    not the victim's daemon."""
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else shutil.which("python3")
    if not python or python.startswith("/root"):
        pytest.skip("no python the second user can run")
    shared = Path(tempfile.mkdtemp(prefix="omnid-shared-"))
    os.chmod(shared, 0o1777)
    code = _SQUAT.replace("os.mkdir(folder, 0o755)", "pass").replace('os.path.join(folder, "omnid.sock")', "folder")
    path = shared / "omnid.sock"
    attacker = subprocess.Popen([python, "-c", code, str(path)], user=squatter.pw_uid, group=squatter.pw_gid,
                                extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout is not None and attacker.stdin is not None
        assert attacker.stdout.readline().strip() == "ready"
        with pytest.raises(PermissionError) as info:
            OmniClient(f"unix:{path}", connect_timeout=1)
        assert str(path) in str(info.value) and f"uid {squatter.pw_uid}" in str(info.value)
        attacker.stdin.write("stop\n")
        attacker.stdin.flush()
        assert attacker.stdout.readline().strip() == "0"
    finally:
        attacker.kill()
        attacker.wait()
        shutil.rmtree(shared, ignore_errors=True)


# -- token_ and tcp_: the TCP endpoint's secret and address ------------------------------------------------------

def test_token_existing_folder_keeps_its_mode(hostile) -> None:
    assert stat.S_IMODE((hostile["tmp"] / "tokens").stat().st_mode) == 0o755
    assert stat.S_IMODE((hostile["tmp"] / "tokens" / "token").stat().st_mode) == 0o600


def test_token_file_readable_by_others_is_refused(tmp_path: Path, test_model) -> None:
    token = tmp_path / "token"
    token.write_text("a" * 43 + "\n")
    os.chmod(token, 0o644)
    line = serve_refused(tmp_path, *_model_flags(test_model), "--socket", str(tmp_path / "run" / "s.sock"),
                         "--tcp", f"127.0.0.1:{free_port()}", "--token-file", str(token))
    assert str(token) in line and "0644" in line


def test_token_file_too_short_is_refused(tmp_path: Path, test_model) -> None:
    token = tmp_path / "token"
    token.write_text("secret\n")
    os.chmod(token, 0o600)
    line = serve_refused(tmp_path, *_model_flags(test_model), "--socket", str(tmp_path / "run" / "s.sock"),
                         "--tcp", f"127.0.0.1:{free_port()}", "--token-file", str(token))
    assert str(token) in line and "16" in line


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:0", "[::1]:65536"])
def test_tcp_port_out_of_range_is_refused(tmp_path: Path, test_model, address: str) -> None:
    """127.0.0.1:99999 used to listen on 34463 (99999 mod 65536): a port nobody asked for."""
    line = serve_refused(tmp_path, *_model_flags(test_model), "--socket", str(tmp_path / "run" / "s.sock"),
                         "--tcp", address, "--token-file", str(tmp_path / "token"))
    assert "1-65535" in line and address in line


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_tcp_auth_scheme_is_case_insensitive(hostile, scheme: str) -> None:
    """RFC 7235: the auth-scheme is case-insensitive; only the token must match."""
    channel = grpc.insecure_channel(f"127.0.0.1:{hostile['port']}")
    stub = omnid_pb2_grpc.OmniStub(channel)
    try:
        reply = stub.Status(pb.StatusRequest(), metadata=(("authorization", f"{scheme} {hostile['token']}"),))
        assert reply.model_name
        wrong = rpc_error(lambda: stub.Status(pb.StatusRequest(), metadata=(("authorization", f"{scheme} nope"),)))
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()


# -- allow_read_: check-then-use races and what messages give away ------------------------------------------------

class FolderSwapper:
    """Swaps `folder` for a symlink to `target` and back, as fast as it can, until stopped."""

    def __init__(self, folder: Path, target: Path) -> None:
        self.folder, self.target, self.real = folder, target, folder.with_name(folder.name + ".real")
        self.swaps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            os.rename(self.folder, self.real)
            os.symlink(self.target, self.folder)
            time.sleep(0.0005)
            os.unlink(self.folder)
            os.rename(self.real, self.folder)
            self.swaps += 1
            time.sleep(0.0005)

    def __enter__(self) -> "FolderSwapper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_allow_read_folder_swapped_for_a_link_during_ingest(hostile, omni: OmniClient) -> None:
    """A folder on an allowed path swapped for a symlink to outside while IngestDocument runs: the daemon used to
    read the outside file (11 times in 60). Now it reads the inside one or refuses, never the outside one."""
    inside_pdf, outside_pdf = make_report(1, lines=1), make_report(2, lines=1)
    sub = hostile["allowed"] / "race-pdf"
    sub.mkdir()
    (sub / "doc.pdf").write_bytes(inside_pdf)
    (hostile["outside"] / "doc.pdf").write_bytes(outside_pdf)
    outside_id = hashlib.sha256(outside_pdf).hexdigest()
    request = pb.IngestDocumentRequest(path=str(sub / "doc.pdf"))
    outcomes: dict[str, int] = {}
    with FolderSwapper(sub, hostile["outside"]) as swapper:
        for _ in range(80):
            try:
                done = list(omni.stub.IngestDocument(request))[-1].done
                outcome = "outside" if done.document_id == outside_id else "inside"
            except grpc.RpcError as exc:
                assert str(hostile["outside"]) not in exc.details()  # where the link points is not said
                outcome = exc.code().name
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert swapper.swaps > 10
    assert outcomes.get("outside", 0) == 0, outcomes
    assert outcomes.get("inside", 0) > 0, outcomes  # the race did not just refuse everything
    assert outside_id not in {d.document_id for d in omni.list_documents()}


def _wav(rate: int, seconds: float = 0.5) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, np.zeros(int(rate * seconds), np.float32), rate, format="WAV")
    return out.getvalue()


def test_allow_read_folder_swapped_for_a_link_during_transcription(hostile, omni: OmniClient) -> None:
    """The same race on Transcribe. Both files have a sample rate the daemon refuses, so every try ends right
    after the daemon read the header, and the refusal names the rate it read: 5000 Hz inside, 4000 Hz outside."""
    sub = hostile["allowed"] / "race-wav"
    sub.mkdir()
    (sub / "talk.wav").write_bytes(_wav(5000))
    (hostile["outside"] / "talk.wav").write_bytes(_wav(4000))
    request = pb.TranscribeRequest(path=str(sub / "talk.wav"))
    outcomes: dict[str, int] = {}
    with FolderSwapper(sub, hostile["outside"]):
        for _ in range(120):
            error = rpc_error(lambda: omni.stub.Transcribe(request))
            assert str(hostile["outside"]) not in error.details()
            outcome = ("outside" if "4000 Hz" in error.details() else
                       "inside" if "5000 Hz" in error.details() else error.code().name)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("outside", 0) == 0, outcomes
    assert outcomes.get("inside", 0) > 0, outcomes


def test_allow_read_link_outside_is_refused_without_saying_where_it_points(hostile, omni: OmniClient) -> None:
    secret = hostile["outside"] / "secret-plans.pdf"
    secret.write_bytes(make_report(1, lines=1))
    link = hostile["allowed"] / "innocent.pdf"
    link.symlink_to(secret)
    for call in (lambda: omni.stub.IngestDocument(pb.IngestDocumentRequest(path=str(link))),
                 lambda: omni.stub.Transcribe(pb.TranscribeRequest(path=str(link)))):
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert str(link) in error.details()
        assert "secret-plans" not in error.details() and str(hostile["outside"]) not in error.details()


def test_allow_read_fifo_is_refused_without_hanging(hostile, omni: OmniClient) -> None:
    """A FIFO under an allowed folder: opening it for reading would wait for a writer forever."""
    fifo = hostile["allowed"] / "pipe.pdf"
    os.mkfifo(fifo)
    error = rpc_error(lambda: omni.stub.IngestDocument(pb.IngestDocumentRequest(path=str(fifo)), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a regular file" in error.details()


# -- status_: known causes get clear statuses, messages give nothing away -----------------------------------------

def test_status_symlink_loop_is_invalid_argument(hostile, omni: OmniClient) -> None:
    loop = hostile["allowed"] / "loop.pdf"
    loop.symlink_to(loop)
    for call in (lambda: omni.stub.IngestDocument(pb.IngestDocumentRequest(path=str(loop))),
                 lambda: omni.stub.Transcribe(pb.TranscribeRequest(path=str(loop)))):
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "symlink loop" in error.details()


def test_status_name_too_long_is_invalid_argument(hostile, omni: OmniClient) -> None:
    path = hostile["allowed"] / ("x" * 300 + ".pdf")
    error = rpc_error(lambda: omni.stub.IngestDocument(pb.IngestDocumentRequest(path=str(path))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "too long" in error.details()
    assert len(error.details()) < 300


def test_status_missing_file_is_not_found(hostile, omni: OmniClient) -> None:
    error = rpc_error(lambda: omni.stub.IngestDocument(pb.IngestDocumentRequest(
        path=str(hostile["allowed"] / "nope.pdf"))))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def _raw_call(endpoint: str, method: str, raw: bytes, streaming: bool) -> grpc.RpcError:
    """Send bytes a well-behaved client could not produce (protobuf refuses to serialize invalid UTF-8)."""
    channel = grpc.insecure_channel(endpoint)
    try:
        call = (channel.unary_stream if streaming else channel.unary_unary)(f"/omnid.v1.Omni/{method}")
        return rpc_error(lambda: call(raw, timeout=30))
    finally:
        channel.close()


def test_status_invalid_utf8_is_invalid_argument(hostile) -> None:
    endpoint = f"unix:{hostile['process'].socket}"
    text_request = pb.GenerateRequest(parts=[pb.Part(text="HELLO")]).SerializeToString()
    path_request = pb.IngestDocumentRequest(path="/tmp/HELLO.pdf").SerializeToString()
    query_request = pb.ListMeetingsRequest(query="HELLO").SerializeToString()
    for method, raw, streaming in (("Generate", text_request, True), ("IngestDocument", path_request, True),
                                   ("ListMeetings", query_request, False)):
        error = _raw_call(endpoint, method, raw.replace(b"HELLO", b"\xff\xfeLLO"), streaming)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error.details())
        assert "UTF-8" in error.details()
    with OmniClient(endpoint) as c:
        assert c.status().model_name


def test_status_messages_carry_no_heap_addresses(omni: OmniClient) -> None:
    """soundfile used to say "Error opening <_io.BytesIO object at 0x7f...>: Format not recognised."."""
    garbage = b"RIFF\x00\x00\x00\x00WAVEjunk" * 10
    for call in (lambda: omni.generate(pb.Part(audio=pb.Audio(encoded=garbage)), text("x")),
                 lambda: omni.transcribe(garbage)):
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "0x" not in error.details() and "object at" not in error.details(), error.details()


def test_status_disk_full_is_resource_exhausted(small_disk: Path, tmp_path: Path, test_model) -> None:
    process = start_daemon(tmp_path, {"model": str(test_model.text), "mmproj": str(test_model.mmproj),
                                      "backend": "auto"},
                           ["--threads", "1", "--ctx", "4096", "--cache-disk", "off", "--data-dir", str(small_disk)])
    try:
        with OmniClient(f"unix:{process.socket}") as c:
            filler = fill_disk(small_disk)
            upload = wav_bytes(300, seconds=20.0)  # 640 KB to keep next to the transcript
            error = rpc_error(lambda: c.transcribe(upload))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "disk is full" in error.details()
            error = rpc_error(lambda: c.ingest_document(make_report(3, lines=1)))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "disk is full" in error.details()
            assert c.status().model_name  # alive, and serving what needs no disk
            filler.unlink()
            assert c.ingest_document(make_report(3, lines=1)).page_count == 3  # room again: it works again
    finally:
        process.stop()


# -- images_: what reaches Pillow ---------------------------------------------------------------------------------

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
       b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")


def test_images_eps_never_reaches_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow opened any format it knows; EPS goes to Ghostscript. Only the proto's formats are tried now."""
    calls: list[object] = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript",
                        lambda *a, **k: calls.append(a) or Image.new("RGB", (10, 10)).im)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    from omnid.models.base import InputError
    for data in (EPS, _encoded("TIFF"), _encoded("PPM"), _encoded("ICO")):
        with pytest.raises(InputError, match="not in a format the daemon decodes"):
            decode_image(data, 256)
    assert calls == []
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF"):  # what the proto lists still decodes
        assert decode_image(_encoded(fmt), 256).rgb.shape == (12, 16, 3)


def _encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


def test_images_eps_over_the_wire_is_invalid_argument(omni: OmniClient) -> None:
    error = rpc_error(lambda: omni.generate(pb.Part(image=pb.Image(data=EPS)), text("x")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "PNG, JPEG, WebP, BMP, GIF" in error.details()


def test_images_pixel_limit_is_the_documented_one() -> None:
    """Documented: 100 megapixels. Pillow's own guard refused from 89.5 MP (its default) on."""
    from omnid.models.base import InputError
    accepted = io.BytesIO()
    Image.new("1", (9500, 9500)).save(accepted, format="PNG")  # 90.25 MP: over Pillow's default, under ours
    assert decode_image(accepted.getvalue(), 64).rgb.shape == (64, 64, 3)
    refused = io.BytesIO()
    Image.new("1", (10001, 10000)).save(refused, format="PNG")  # one row over the limit
    with pytest.raises(InputError, match=f"the limit is {MAX_PIXELS} pixels"):
        decode_image(refused.getvalue(), 64)


# -- meetings_: what a crash leaves behind -------------------------------------------------------------------------

def _kill_mid_stream(daemon, stream) -> None:
    """SIGKILL the daemon while `stream` runs: the stream must end in an error, not hang."""
    daemon.process.kill()
    daemon.process.wait(20)
    with pytest.raises(grpc.RpcError):
        list(stream)


def test_meetings_sigkill_is_reported_interrupted(tmp_path: Path, test_model) -> None:
    """A transcription whose daemon is SIGKILLed mid-way used to be reported "stopped", like a finished one."""
    model = {"model": str(test_model.text), "mmproj": str(test_model.mmproj), "backend": "auto"}
    flags = ["--threads", "1", "--ctx", "4096", "--cache-disk", "off"]
    first = start_daemon(tmp_path, model, flags)
    try:
        with OmniClient(f"unix:{first.socket}") as c:
            stream = c.transcribe(wav_bytes(440, seconds=90.0), title="killed mid-way")
            deadline = time.monotonic() + 60
            while not c.meetings() and time.monotonic() < deadline:
                time.sleep(0.05)
            meeting_id = c.meetings()[0].meeting_id
            _kill_mid_stream(first, stream)
    finally:
        first.stop()
    second = start_daemon(tmp_path, model, flags)
    try:
        with OmniClient(f"unix:{second.socket}") as c:
            assert c.control_meeting("status", meeting_id).state == "interrupted"
    finally:
        second.stop()


def test_meetings_live_recording_killed_is_interrupted(tmp_path: Path, test_model) -> None:
    """The same for a live recording (a PulseAudio virtual microphone; skipped where there is none): the spool
    and the row survive the kill, and the next daemon reports the meeting interrupted."""
    try:
        mic = PulseMic()
    except PulseUnavailable as exc:
        pytest.skip(str(exc))
    old = mic.activate()  # the daemon started below inherits PULSE_SERVER
    model = {"model": str(test_model.text), "mmproj": str(test_model.mmproj), "backend": "auto"}
    flags = ["--threads", "1", "--ctx", "4096", "--cache-disk", "off"]
    try:
        first = start_daemon(tmp_path, model, flags)
        try:
            with OmniClient(f"unix:{first.socket}") as c:
                stream = c.record_meeting(title="killed live", device="pulse")
                deadline = time.monotonic() + 60
                state = c.control_meeting("status")
                while state.state != "recording" and time.monotonic() < deadline:
                    time.sleep(0.1)
                    state = c.control_meeting("status")
                assert state.state == "recording"
                time.sleep(1.0)  # a second of audio in the spool
                _kill_mid_stream(first, stream)
        finally:
            first.stop()
        second = start_daemon(tmp_path, model, flags)
        try:
            with OmniClient(f"unix:{second.socket}") as c:
                assert c.control_meeting("status", state.meeting_id).state == "interrupted"
                assert c.control_meeting("status").state == "none"  # nothing is being recorded now
        finally:
            second.stop()
    finally:
        for key, value in old.items():
            if value:
                os.environ[key] = value
            else:
                os.environ.pop(key, None)
        mic.close()
