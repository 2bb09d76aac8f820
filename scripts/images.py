#!/usr/bin/env python3
"""Container images built without a registry or Docker: OCI image archives that
`ctr -n k8s.io images import` takes, for the real node (scripts/node.sh).

  images.py operator BINARY OUT     the operator image: BINARY, the shared libraries it
                                    needs (ldd), a nonroot user 65532, CA certificates; its
                                    user and entrypoint read from the Dockerfile's final stage
  images.py pause OUT               the sandbox image: busybox-static sleeping
  images.py busybox OUT             busybox (Debian's busybox-static) as docker.io/library/busybox
  images.py seaweedfs WEED OUT      an S3 server: SeaweedFS's `weed` binary
  images.py qdrant QDRANT OUT       the real Qdrant server: its binary (debug info stripped)
                                    and the shared libraries it needs, busybox, user 1000
  images.py dockerfile              the user and entrypoint of the Dockerfile's final stage
                                    (JSON), which the operator image takes
  images.py check OUT               the operator image OUT runs as the Dockerfile's final stage
                                    does: the same user (present in its /etc/passwd and
                                    /etc/group) and entrypoint (a file of the image)

Each image is one layer, files owned by root, times fixed (the same inputs give the same
bytes).
"""

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Names the e2e manifests use; the kubelet takes these local images (IfNotPresent).
OPERATOR_REF = os.environ.get("E2E_IMAGE", "snapshot-operator:e2e")
PAUSE_REF = "snapshot-operator.local/pause:1"
BUSYBOX_REF = "docker.io/library/busybox:1.37"
SEAWEEDFS_REF = "snapshot-operator.local/seaweedfs:e2e"
QDRANT_REF = "snapshot-operator.local/qdrant:e2e"
MTIME = 1_700_000_000


def dockerfile_runtime():
    """USER and ENTRYPOINT of the Dockerfile's last stage."""
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    last = text[text.rindex("\nFROM "):]
    user = re.search(r"^USER\s+(\S+)\s*$", last, re.M).group(1)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", last, re.M).group(1))
    return {"User": user, "Entrypoint": entrypoint}


class Layer:
    """A layer's files, in memory, as a tar."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.GNU_FORMAT)
        self.dirs = set()
        self.files = set()

    def _dirs(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
                self.tar.addfile(info)

    def dir(self, path, mode=0o755, owner=0):
        self._dirs(path)
        if path.strip("/") not in self.dirs:
            self.dirs.add(path.strip("/"))
            info = tarfile.TarInfo(path.strip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, MTIME
            info.uid = info.gid = owner
            self.tar.addfile(info)

    def data(self, path, data, mode=0o644):
        self._dirs(path)
        self.files.add(path.strip("/"))
        info = tarfile.TarInfo(path.strip("/"))
        info.size, info.mode, info.mtime = len(data), mode, MTIME
        self.tar.addfile(info, io.BytesIO(data))

    def file(self, path, source, mode=None):
        with open(source, "rb") as f:
            data = f.read()
        self.data(path, data, mode if mode is not None else os.stat(source).st_mode & 0o777)

    def link(self, path, target):
        self._dirs(path)
        self.files.add(path.strip("/"))
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, MTIME
        self.tar.addfile(info)

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def full_name(ref):
    """The name the kubelet asks containerd for: Docker's normalization (a first component
    without a dot, a colon or "localhost" is a Docker Hub name: docker.io/library/...)."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ref
    return "docker.io/" + (ref if rest else "library/" + ref)


def write_image(out, ref, layer, config):
    """An OCI image archive at `out` of one layer, named `ref` (in full)."""
    ref = full_name(ref)
    diff = layer.bytes()
    # Images stay on this machine: compressed fast rather than small.
    blob = gzip.compress(diff, compresslevel=1, mtime=0)
    digest = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()
    image_config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [digest(diff)]},
        "history": [{"created_by": "snapshot-operator scripts/images.py"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(image_config), "size": len(image_config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(blob), "size": len(blob)}],
    }, sort_keys=True).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest(manifest), "size": len(manifest),
                       "annotations": {"io.containerd.image.name": ref,
                                       "org.opencontainers.image.ref.name": ref}}],
    }, sort_keys=True).encode()
    with tarfile.open(out, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), MTIME
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for b in (image_config, manifest, blob):
            add("blobs/sha256/" + digest(b).split(":")[1], b)
    print(f"{ref} -> {out} ({len(blob)} bytes of layer)")


def base_files(layer, user, uid):
    """/etc/passwd and /etc/group with root and `user` (uid = gid), the user's home (theirs),
    a /tmp anyone may write to (as distroless has them)."""
    layer.data("etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\n"
                             f"{user}:x:{uid}:{uid}:{user}:/home/{user}:/sbin/nologin\n".encode())
    layer.data("etc/group", f"root:x:0:\n{user}:x:{uid}:\n".encode())
    layer.dir(f"home/{user}", 0o700, uid)
    layer.dir("tmp", 0o1777)


def shared_libraries(binary):
    """The shared libraries `binary` loads (ldd), with the loader."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def add_libraries(layer, binary):
    """The shared libraries `binary` loads, at their paths (links to where they are)."""
    for lib in shared_libraries(binary):
        real = os.path.realpath(lib)
        if real.strip("/") not in layer.files:
            layer.file(real, real, 0o755)
        if real != lib and lib.strip("/") not in layer.files:
            layer.link(lib, real)


def add_ca_certificates(layer):
    """This machine's CA bundle, where TLS clients look for it."""
    certs = "/etc/ssl/certs/ca-certificates.crt"
    if os.path.exists(certs):
        layer.file(certs, certs, 0o644)


def operator(binary, out):
    runtime = dockerfile_runtime()
    uid = int(runtime["User"].split(":")[0])
    layer = Layer()
    base_files(layer, "nonroot", uid)
    target = runtime["Entrypoint"][0]
    layer.file(target, binary, 0o755)
    add_libraries(layer, binary)
    add_ca_certificates(layer)
    config = {"User": runtime["User"], "Entrypoint": runtime["Entrypoint"],
              "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
              "WorkingDir": f"/home/nonroot"}
    write_image(out, OPERATOR_REF, layer, config)


def add_busybox(layer):
    """Debian's busybox-static and its applets in /bin."""
    layer.file("bin/busybox", "/bin/busybox", 0o755)
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            layer.link(f"bin/{applet}", "busybox")


def busybox_layer():
    layer = Layer()
    add_busybox(layer)
    base_files(layer, "nobody", 65534)
    return layer


def pause(out):
    layer = Layer()
    layer.file("bin/busybox", "/bin/busybox", 0o755)
    write_image(out, PAUSE_REF, layer, {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]})


def busybox(out):
    write_image(out, BUSYBOX_REF, busybox_layer(), {"Cmd": ["sh"], "Env": ["PATH=/bin"]})


def seaweedfs(weed, out):
    layer = busybox_layer()
    layer.file("usr/bin/weed", weed, 0o755)
    write_image(out, SEAWEEDFS_REF, layer, {"Entrypoint": ["/usr/bin/weed"], "Env": ["PATH=/usr/bin:/bin"]})


def qdrant(binary, out):
    layer = Layer()
    add_busybox(layer)
    base_files(layer, "qdrant", 1000)
    with tempfile.TemporaryDirectory() as tmp:
        stripped = os.path.join(tmp, "qdrant")
        subprocess.run(["strip", "--strip-debug", "-o", stripped, binary], check=True)
        layer.file("qdrant/qdrant", stripped, 0o755)
    add_libraries(layer, binary)
    # Qdrant builds its HTTP clients at start, and they refuse to without CA certificates.
    add_ca_certificates(layer)
    config = {"User": "1000:1000", "Entrypoint": ["/qdrant/qdrant"], "WorkingDir": "/qdrant",
              "Env": ["PATH=/qdrant:/bin", "QDRANT__TELEMETRY_DISABLED=true",
                      "QDRANT_INIT_FILE_PATH=/tmp/.qdrant-initialized"]}
    write_image(out, QDRANT_REF, layer, config)


def check(archive):
    """Fails unless the operator image's config and files agree with the Dockerfile."""
    expected = dockerfile_runtime()
    with tarfile.open(archive) as tar:
        blob = lambda digest: tar.extractfile("blobs/sha256/" + digest.split(":")[1]).read()
        index = json.loads(tar.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))["config"]
        layer = tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(manifest["layers"][0]["digest"]))))
        members = {m.name: m for m in layer.getmembers()}
        names = set(members)
        passwd = layer.extractfile("etc/passwd").read().decode()
        group = layer.extractfile("etc/group").read().decode()
    problems = []
    for key in ("User", "Entrypoint"):
        if config.get(key) != expected[key]:
            problems.append(f"{key} is {config.get(key)!r}, the Dockerfile says {expected[key]!r}")
    uid, _, gid = expected["User"].partition(":")
    if not any(line.split(":")[2] == uid for line in passwd.splitlines()):
        problems.append(f"no user {uid} in /etc/passwd")
    if gid and not any(line.split(":")[2] == gid for line in group.splitlines()):
        problems.append(f"no group {gid} in /etc/group")
    tmp = members.get("tmp")
    if tmp is None or tmp.mode != 0o1777:
        problems.append("no /tmp that anyone may write to (mode 1777)")
    if expected["Entrypoint"][0].lstrip("/") not in names:
        problems.append(f"no {expected['Entrypoint'][0]} in the image")
    if problems:
        sys.exit(f"{archive}: " + "; ".join(problems))
    print(f"{archive}: user {config['User']}, entrypoint {config['Entrypoint']}, as the Dockerfile says")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "operator":
        operator(args[0], args[1])
    elif command == "pause":
        pause(args[0])
    elif command == "busybox":
        busybox(args[0])
    elif command == "seaweedfs":
        seaweedfs(args[0], args[1])
    elif command == "qdrant":
        qdrant(args[0], args[1])
    elif command == "check":
        check(args[0])
    elif command == "dockerfile":
        print(json.dumps(dockerfile_runtime()))
    else:
        sys.exit(f"unknown command {command}")
