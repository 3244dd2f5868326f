"""Local-folder object store for the embedded demo and the unit tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from signwatch.ports.store import ObjectNotFound, check_key


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file and rename: readers never see a partial object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.uri(key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(key) from exc

    def open(self, key: str):
        """The object as a binary file to read in pieces (a capture file need not fit in memory)."""
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def ping(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK)


def open_url(url, credentials) -> FileStore:
    """``file:///absolute/path`` or ``file:relative``."""
    from urllib.parse import unquote

    parsed = url.parsed
    path = unquote(parsed.netloc + parsed.path) if parsed.netloc else unquote(parsed.path)
    if not path:
        from signwatch.ports import UnsupportedURL

        raise UnsupportedURL(f"file URL needs a path: {url.url!r}")
    return FileStore(Path(path))
