"""Model files by URL or public model name: downloaded once into a cache folder, then read from there.

Everywhere an options file, a weight file or a model folder is accepted (:class:`elmo_fast.ElmoEmbedder`,
:class:`elmo_fast.Elmo`, :meth:`elmo_fast.BiLM.from_files`, the classes of :mod:`elmo_fast.compat.allennlp`, the
``--options-file`` / ``--weight-file`` / ``--model-dir`` / ``MODEL_DIR`` arguments of the CLI), the value may be

* a local path: used as it is (no network, no cache; exactly as before);
* an ``http://`` or ``https://`` URL: downloaded into the cache on first use, e.g. AllenNLP's ``https://allennlp.
  s3.amazonaws.com/models/elmo/2x4096_512_2048cnn_2xhighway/elmo_2x4096_512_2048cnn_2xhighway_options.json``
  (one string); for a model folder, the URL of the folder (``options.json`` and ``weights.hdf5`` under it);
* the name of a public ELMo model (:data:`PUBLIC_MODELS`: ``small``, ``medium``, ``original``,
  ``original-5.5b``, or AllenNLP's folder names such as ``2x4096_512_2048cnn_2xhighway``), when no local file
  or folder of that name exists: AllenNLP's URLs of that model's options or weights.

Downloads go through pooch's HTTP downloader (``requests`` underneath; a progress bar when stderr is a
terminal, and an INFO log line) into a temporary file next to the target, which is checked (an options file
must be a JSON object, a weight file an HDF5 file that opens whole, i.e. not truncated; the SHA-256 where it is
known) and only then renamed into the cache, so the cache never holds a partial or corrupt file. A file lock
per target (under ``<cache>/.locks``) lets one process download while others wait for it and then read the same
file. AllenNLP publishes no checksums for the public models, so their files are checked by format only.

Environment:

* ``ELMO_FAST_CACHE``: the cache folder (default: the user's cache folder, e.g. ``~/.cache/elmo-fast``).
* ``ELMO_FAST_OFFLINE=1``: never touch the network; a URL or name whose file is not in the cache is an error
  naming the URL and the cache path.
* ``ELMO_FAST_MODELS_URL``: where the public names point (default AllenNLP's
  ``https://allennlp.s3.amazonaws.com/models/elmo``; for a mirror). The files land in the same cache place
  whichever base they came from.

Cache layout: a public model's files are ``<cache>/<folder>/options.json`` and ``weights.hdf5`` (so the
folder is a model folder, for ``--model-dir`` / ``from_pretrained``), whether asked for by name or by one of
AllenNLP's URLs; any other URL ``https://host/path/to/file?query`` is
``<cache>/urls/host/<16 hex digits of the SHA-256 of https://host/path/to?query>/file``, so the files of one
remote folder share one local folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, Union
from urllib.parse import urlsplit

from . import settings
from .errors import UserError

__all__ = ["DownloadError", "PublicModel", "PUBLIC_MODELS", "DEFAULT_MODELS_URL", "resolve", "resolve_files",
           "resolve_args", "download", "cache_dir", "cache_path", "offline", "is_url", "public_model", "model_urls"]

log = logging.getLogger(__name__)

Kind = Literal["options", "weights", "model_dir"]
PathArg = TypeVar("PathArg", bound=Union[str, "os.PathLike[str]"])

ENV_CACHE = "ELMO_FAST_CACHE"
ENV_OFFLINE = "ELMO_FAST_OFFLINE"
ENV_MODELS_URL = "ELMO_FAST_MODELS_URL"
#: AllenNLP's home of the public ELMo models (``<base>/<folder>/elmo_<folder>_options.json`` and ``_weights.hdf5``)
DEFAULT_MODELS_URL = "https://allennlp.s3.amazonaws.com/models/elmo"
#: the same files at their older address, as many AllenNLP configurations still spell it
_LEGACY_MODELS_URL = "https://s3-us-west-2.amazonaws.com/allennlp/models/elmo"
#: seconds without a byte from the server before a download fails (requests' connect and read timeout)
TIMEOUT = 60.0
#: the HDF5 superblock signature; it sits at offset 0, 512, 1024, 2048, ... (a user block may precede it)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: the local file names of a model folder (what :func:`elmo_fast.pretrained.detect_format` looks for)
MODEL_FILES = {"options": "options.json", "weights": "weights.hdf5"}


class DownloadError(UserError):
    """A model file could not be had: the URL, what failed, and (offline) the cache path are in the message."""


@dataclass(frozen=True)
class PublicModel:
    """A public ELMo model as AllenNLP publishes it.

    Attributes:
        name: the short name (``"original"``). folder: AllenNLP's folder (``"2x4096_512_2048cnn_2xhighway"``).
        aliases: other accepted spellings. sha256: known SHA-256 of ``"options"`` / ``"weights"`` (None: unknown).
    """

    name: str
    folder: str
    aliases: tuple[str, ...] = ()
    sha256: tuple[tuple[str, str], ...] = ()

    def file_name(self, kind: str) -> str:
        """The published file name: ``elmo_<folder>_options.json`` or ``elmo_<folder>_weights.hdf5``."""
        return f"elmo_{self.folder}_options.json" if kind == "options" else f"elmo_{self.folder}_weights.hdf5"

    def checksum(self, kind: str) -> str | None:
        return dict(self.sha256).get(kind)


#: AllenNLP's published ELMo models (https://allennlp.org/elmo). AllenNLP publishes no checksums for them.
PUBLIC_MODELS: dict[str, PublicModel] = {m.name: m for m in (
    PublicModel("small", "2x1024_128_2048cnn_1xhighway"),
    PublicModel("medium", "2x2048_256_2048cnn_1xhighway"),
    PublicModel("original", "2x4096_512_2048cnn_2xhighway"),
    PublicModel("original-5.5b", "2x4096_512_2048cnn_2xhighway_5.5B", aliases=("original-5.5B", "5.5b")),
)}


def _normal_name(name: str) -> str:
    """``"Original 5.5B"``, ``"original_5.5b"``, ``"elmo_2x1024_128_2048cnn_1xhighway"`` -> comparable keys."""
    key = re.sub(r"[\s_]+", "-", name.strip().lower())
    return key[len("elmo-"):] if key.startswith("elmo-") else key


_NAMES: dict[str, PublicModel] = {}
for _m in PUBLIC_MODELS.values():
    for _n in (_m.name, _m.folder, *_m.aliases):
        _NAMES[_normal_name(_n)] = _m


def is_url(value: object) -> bool:
    """Whether ``value`` is an ``http://`` or ``https://`` URL (a str; path objects never are)."""
    return isinstance(value, str) and re.match(r"(?i)https?://", value.strip()) is not None


def public_model(value: object) -> PublicModel | None:
    """The public model named by ``value``, or None (not a str, no such name, or a local path of that name
    exists: a local file or folder always wins)."""
    if not isinstance(value, str) or not value.strip() or os.path.exists(value):
        return None
    return _NAMES.get(_normal_name(value))


def offline() -> bool:
    """``ELMO_FAST_OFFLINE`` is set to something true (1, true, yes, on)."""
    return bool(settings.get(ENV_OFFLINE))


def cache_dir() -> Path:
    """``ELMO_FAST_CACHE``, else the user's cache folder for elmo-fast (created when a file is downloaded)."""
    env = settings.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    import pooch
    return Path(pooch.os_cache("elmo-fast"))


def models_url() -> str:
    """The base URL of the public models (``ELMO_FAST_MODELS_URL`` or :data:`DEFAULT_MODELS_URL`), no final /."""
    return (settings.get(ENV_MODELS_URL) or DEFAULT_MODELS_URL).rstrip("/")


def model_urls(model: PublicModel | str) -> dict[str, str]:
    """``{"options": URL, "weights": URL}`` of a public model (a :class:`PublicModel` or its name)."""
    if isinstance(model, str):
        found = public_model(model) or _NAMES.get(_normal_name(model))
        if found is None:
            raise UserError(f"{model!r}: not a public ELMo model; expected one of {sorted(PUBLIC_MODELS)}")
        model = found
    base = models_url()
    return {kind: f"{base}/{model.folder}/{model.file_name(kind)}" for kind in ("options", "weights")}


def _catalogued(url: str) -> tuple[PublicModel, str] | None:
    """(model, kind) when ``url`` is one of the public models' files at a known base, else None."""
    for base in {models_url(), DEFAULT_MODELS_URL, _LEGACY_MODELS_URL, DEFAULT_MODELS_URL.replace("https:", "http:")}:
        if not url.startswith(base + "/"):
            continue
        parts = url[len(base) + 1:].split("/")
        if len(parts) != 2:
            continue
        for model in PUBLIC_MODELS.values():
            for kind in ("options", "weights"):
                if parts == [model.folder, model.file_name(kind)]:
                    return model, kind
    return None


def cache_path(url: str) -> Path:
    """Where the file of ``url`` lives in the cache (see the module docstring for the layout)."""
    known = _catalogued(url)
    if known is not None:
        model, kind = known
        return cache_dir() / model.folder / MODEL_FILES[kind]
    parts = urlsplit(url)
    folder, _, name = parts.path.rpartition("/")
    if not name or name in (".", ".."):
        raise DownloadError(f"{url}: expected the URL of a file, found one that ends in {name or '/'!r}")
    remote_folder = f"{parts.scheme.lower()}://{parts.netloc.lower()}{folder}"
    if parts.query:
        remote_folder += f"?{parts.query}"
    host = re.sub(r"[^A-Za-z0-9.-]", "_", parts.netloc.lower()) or "host"
    return cache_dir() / "urls" / host / hashlib.sha256(remote_folder.encode()).hexdigest()[:16] / name


# ------------------------------------------------------------------------------------------------------------
def _check_hdf5(path: Path, url: str) -> None:
    """A complete HDF5 file: the signature at 0 or at a power of two from 512, and h5py opens it (HDF5 compares
    the end-of-file address stored in the superblock with the file's size, so a truncated file fails here)."""
    import h5py

    size = path.stat().st_size
    offsets = [0] + [512 << k for k in range(0, 40) if (512 << k) < size]
    with open(path, "rb") as f:
        found = False
        for offset in offsets:
            f.seek(offset)
            if f.read(8) == _HDF5_SIGNATURE:
                found = True
                break
        if not found:
            f.seek(0)
            head = f.read(16)
            raise DownloadError(f"{url}: expected an HDF5 weight file, found {size} bytes without the HDF5 "
                                f"signature (starting {head!r}); nothing was cached")
    try:
        with h5py.File(path, "r"):
            pass
    except OSError as e:
        raise DownloadError(f"{url}: the downloaded HDF5 file ({size} bytes) does not open, it is truncated or "
                            f"damaged ({e}); nothing was cached") from None


def _check_json(path: Path, url: str) -> None:
    """An options file: one JSON object (its fields are checked when the model is loaded)."""
    size = path.stat().st_size
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DownloadError(f"{url}: expected an ELMo options file (JSON), found {size} bytes that do not parse "
                            f"({e}); nothing was cached") from None
    if not isinstance(value, dict):
        raise DownloadError(f"{url}: expected an ELMo options file (a JSON object), found a JSON "
                            f"{type(value).__name__}; nothing was cached")


def _verify(path: Path, url: str, kind: str | None, sha256: str | None) -> None:
    if sha256:
        import pooch
        found = pooch.file_hash(str(path), alg="sha256")
        if found.lower() != sha256.lower():
            raise DownloadError(f"{url}: SHA-256 mismatch: expected {sha256}, found {found} "
                                f"({path.stat().st_size} bytes); nothing was cached")
    if kind is None:
        kind = "options" if path.name.endswith(".json") else "weights" if path.name.endswith((".hdf5", ".h5")) else None
    if kind == "options":
        _check_json(path, url)
    elif kind == "weights":
        _check_hdf5(path, url)


def _http_failure(url: str, exc: BaseException) -> DownloadError:
    """One line naming the URL and what failed, from a requests exception."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        r = exc.response
        return DownloadError(f"{url}: download failed: the server answered HTTP {r.status_code} {r.reason}")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return DownloadError(f"{url}: download failed: the connection closed before the whole file arrived "
                             f"(truncated transfer: {exc}); nothing was cached")
    if isinstance(exc, requests.Timeout):
        return DownloadError(f"{url}: download failed: no answer within {TIMEOUT:g} s ({exc})")
    if isinstance(exc, requests.ConnectionError):
        return DownloadError(f"{url}: download failed: cannot connect ({exc})")
    return DownloadError(f"{url}: download failed: {type(exc).__name__}: {exc}")


def _fetch(url: str, target: Path) -> None:
    """Stream ``url`` into ``target`` with pooch's HTTP downloader and a progress bar on stderr."""
    import pooch
    import requests
    from tqdm import tqdm

    # total=1 until pooch sets the announced size: pooch tests the bar's truth, and tqdm's is False at total 0;
    # disable=None: drawn on a terminal only (no carriage-return noise in log files)
    bar = tqdm(total=1, unit="B", unit_scale=True, ncols=79, leave=True, disable=None,
               desc=os.path.basename(urlsplit(url).path))
    try:
        pooch.HTTPDownloader(progressbar=bar, timeout=TIMEOUT)(url, str(target), None)
    except requests.RequestException as e:
        raise _http_failure(url, e) from None
    finally:
        bar.close()  # pooch closes it only after a whole download


def download(url: str, kind: str | None = None, *, sha256: str | None = None) -> str:
    """The local path of ``url``'s file, downloaded into the cache unless it is there already.

    Args:
        url: an ``http(s)://`` URL.
        kind: ``"options"`` (checked to be a JSON object), ``"weights"`` (checked to be a whole HDF5 file), or
            None (by the file name's extension; no check for others).
        sha256: the expected SHA-256 (hex), if known (public models: see :data:`PUBLIC_MODELS`).

    Returns:
        The path of the cached file (str).

    Raises:
        DownloadError: offline and not cached; HTTP error, connection failure, truncated transfer, wrong
            format or checksum (nothing is left in the cache then).
    """
    if not is_url(url):
        raise DownloadError(f"{url!r}: expected an http:// or https:// URL")
    url = url.strip()
    target = cache_path(url)
    if target.is_file():
        log.debug("%s: cached at %s", url, target)
        return str(target)
    if offline():
        raise DownloadError(f"{url}: not in the cache ({target}) and {ENV_OFFLINE} is set, so it is not "
                            f"downloaded; download it once without {ENV_OFFLINE}, or give a local path")
    from filelock import FileLock

    known = _catalogued(url)
    if sha256 is None and known is not None:
        sha256 = known[0].checksum(known[1])
        kind = kind or known[1]
    # one download per file; the others wait, then find it cached. The locks live apart, so that a model folder
    # in the cache holds the model's files only (`embed --model-dir` fingerprints every file in it)
    locks = cache_dir() / ".locks"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        locks.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{url}: cannot create the cache folder {target.parent} ({e}); set {ENV_CACHE} "
                            "to a writable folder") from None
    lock = FileLock(str(locks / (hashlib.sha256(str(target).encode()).hexdigest()[:32] + ".lock")))
    if not _try_lock(lock):
        log.info("%s: another process is downloading it; waiting for it", url)
        lock.acquire()
    try:
        if target.is_file():  # the process we waited for has put it there
            return str(target)
        part = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
        log.info("downloading %s -> %s", url, target)
        try:
            _fetch(url, part)
            _verify(part, url, kind, sha256)
            os.replace(part, target)  # same folder: atomic, readers see the whole file or none
        finally:
            if part.exists():
                part.unlink()
    finally:
        lock.release()
    return str(target)


def _try_lock(lock) -> bool:
    """Take ``lock`` if nobody holds it (without waiting)."""
    from filelock import Timeout
    try:
        lock.acquire(timeout=0)
        return True
    except Timeout:
        return False


def _public_folder(url: str) -> PublicModel | None:
    """The public model whose AllenNLP folder ``url`` is (``<base>/2x4096_512_2048cnn_2xhighway``), or None."""
    url = url.rstrip("/")
    for base in {models_url(), DEFAULT_MODELS_URL, _LEGACY_MODELS_URL}:
        for model in PUBLIC_MODELS.values():
            if url == f"{base}/{model.folder}":
                return model
    return None


def resolve(value: PathArg, kind: Kind, *, files: tuple[str, ...] = ("options.json", "weights.hdf5")
            ) -> PathArg | str:
    """A local path for an options file, weight file or model folder given as a path, URL or public name.

    Args:
        value: a local path (str or path object; returned unchanged, nothing else happens), an ``http(s)://``
            URL, or a public model name (see the module docstring).
        kind: ``"options"``, ``"weights"`` or ``"model_dir"`` (a URL is then the folder's: ``files`` under it
            are downloaded into one local folder; a public model's folder or name gives its two files).
        files: the file names a model folder URL must provide (``*.json`` are checked as JSON objects,
            ``*.hdf5`` as whole HDF5 files).

    Returns:
        ``value`` itself for a local path, else the path of the cached file or folder (str).

    Raises:
        DownloadError: see :func:`download`.
    """
    if kind not in ("options", "weights", "model_dir"):
        raise ValueError(f"kind: expected 'options', 'weights' or 'model_dir', found {kind!r}")
    if not isinstance(value, str):
        return value
    model = public_model(value)
    if is_url(value):
        if kind != "model_dir":
            return download(value, kind)
        model = _public_folder(value.strip())
        if model is None:
            folder = value.strip().rstrip("/")
            paths = [download(f"{folder}/{name}") for name in files]
            return os.path.dirname(paths[0])
    if model is None:
        return value
    urls = model_urls(model)
    if kind != "model_dir":
        return download(urls[kind], kind, sha256=model.checksum(kind))
    paths = [download(urls[k], k, sha256=model.checksum(k)) for k in ("options", "weights")]
    return os.path.dirname(paths[0])


def resolve_files(options_file: PathArg, weight_file: PathArg) -> tuple[PathArg | str, PathArg | str]:
    """:func:`resolve` of an options file and a weight file (the pair every constructor takes)."""
    return resolve(options_file, "options"), resolve(weight_file, "weights")


#: the CLI's model flags: namespace field -> (flag, kind)
CLI_FIELDS = {"options_file": ("--options-file", "options"), "weight_file": ("--weight-file", "weights"),
              "model_dir": ("--model-dir", "model_dir")}


def resolve_args(args: object) -> None:
    """In place: each model flag of an argparse namespace (``options_file``, ``weight_file``, ``model_dir``) that is
    a URL or a public model name becomes its cached local path; errors name the flag. Nothing is downloaded when
    ``--model-dir`` comes with ``--options-file``/``--weight-file`` (the command refuses that combination)."""
    if getattr(args, "model_dir", None) and (getattr(args, "options_file", None) or getattr(args, "weight_file", None)):
        return
    for field, (flag, kind) in CLI_FIELDS.items():
        value = getattr(args, field, None)
        if not value:
            continue
        try:
            setattr(args, field, resolve(value, kind))  # type: ignore[arg-type]
        except DownloadError as e:
            raise DownloadError(f"{flag}: {e}") from None
