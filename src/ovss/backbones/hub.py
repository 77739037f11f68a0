"""Where weights come from: local files and folders, Hugging Face Hub repos, registered names.

Hub downloads go through `huggingface_hub.hf_hub_download`, so files land in (and are reused from)
the standard Hugging Face cache. The cache location and offline mode are read from the
environment on every call (HF_HUB_CACHE, HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT), not only when
huggingface_hub was imported, so a setting made later in the process still counts.

Failing fast without network: before the first hub download of a process (per endpoint), one
extra HEAD request without retries checks that the hub answers. If it cannot be reached at all
(connection refused, DNS failure, timeout, proxy error), that is remembered and every look-up in
the process reads the local cache only, as if HF_HUB_OFFLINE were set, instead of waiting through
huggingface_hub's retries (about 23 s per uncached file) again and again; what is not cached fails
at once with a message saying how to get it. The same happens when a download ends in "hub
unreachable and not cached". With network the results are unchanged (any HTTP answer, even an
error, counts as reachable). `forget_unreachable()` clears the memory (e.g. in a long-running
server).

Source forms accepted by `resolve_weights`:
    /path/to/file.safetensors | /path/to/folder    a local checkpoint file or model folder
    local-dir:/path                                 the same, spelled explicitly
    hf-hub:org/repo                                 a hub repo (weights chosen as below)
    hf-hub:org/repo/sub/file.safetensors            one file of a hub repo
    clip-vit-b16 (or an alias such as ViT-B/16)    a registered backbone (see pretrained.py)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .pretrained import TOKENIZER_FILES, PretrainedCfg, resolve_name
from .zoo import get_pretrained

__all__ = [
    "DEFAULT_HUB_WEIGHTS",
    "WeightsNotFoundError",
    "download",
    "forget_unreachable",
    "hub_cache_dir",
    "hub_unreachable",
    "is_offline",
    "resolve_weights",
]

# For an `hf-hub:org/repo` without a file name: safetensors first, then pickles.
DEFAULT_HUB_WEIGHTS = (
    "open_clip_model.safetensors",
    "model.safetensors",
    "model.safetensors.index.json",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)
_TRUE = {"1", "on", "yes", "true"}
logger = logging.getLogger(__name__)

# Per hub endpoint, for this process: why it could not be reached (look-ups then use the cache
# only), or that a request got an answer (no further probes).
_unreachable: dict[str, str] = {}
_probed: set[str] = set()


class WeightsNotFoundError(FileNotFoundError):
    """Hub weights that cannot be had here (offline with nothing cached, repo or file missing)."""


def is_offline() -> bool:
    """HF_HUB_OFFLINE as set now, or as huggingface_hub read it at import."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The hub cache in use: `cache_dir`, else HF_HUB_CACHE, else HF_HOME/hub, else the default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _how_to_get(repo: str, files: tuple[str, ...], name: str | None, cache: Path, why: str) -> str:
    target = name or f"hf-hub:{repo}"
    from .dino_pretrained import resolve_dino_name

    if name and resolve_dino_name(name.removeprefix("timm:")) is not None:  # a method's DINO model
        local = ("pass `--dino /path/to/file` (dino=... in Python: ovss.load(method, dino=...)); it "
                 "replaces only the method's DINO model and keeps the preset's other head settings")
    else:
        local = "pass `--weights /path/to/file` (weights=... in Python)"
    return (
        f"cannot get weights {' / '.join(files)} of Hugging Face repo '{repo}': {why}. "
        f"Hub cache searched: {cache}. To fix: run `ovss download {target}` on a machine with network "
        f"access and copy its Hugging Face cache ({cache}) here (or point HF_HOME / HF_HUB_CACHE at "
        f"a copy); or download the file yourself and {local}."
    )


def _endpoint() -> str:
    """HF_ENDPOINT as set now, else what huggingface_hub read at import."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or constants.ENDPOINT


def hub_unreachable() -> str | None:
    """Why the hub (at the current endpoint) could not be reached earlier in this process, if it
    could not; look-ups then use the local cache only."""
    return _unreachable.get(_endpoint())


def forget_unreachable() -> None:
    """Forget earlier connection failures: the next look-up tries the hub again."""
    _unreachable.clear()
    _probed.clear()


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "no answer from the server at all", for the HTTP client that
    huggingface_hub uses (requests in old versions, httpx / httpx2 in newer ones)."""
    import socket
    import sys

    errs: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for mod, names in (("requests.exceptions", ("ConnectionError", "Timeout")),
                       ("httpx", ("ConnectError", "TimeoutException", "ProxyError", "NetworkError")),
                       ("httpx2", ("ConnectError", "TimeoutException", "ProxyError", "NetworkError"))):
        m = sys.modules.get(mod)  # only clients already imported can have raised
        errs += [getattr(m, n) for n in names if m is not None and isinstance(getattr(m, n, None), type)]
    return tuple(errs)


def _mark_unreachable(endpoint: str, error: BaseException) -> None:
    if endpoint in _unreachable:
        return
    cause = error.__cause__ or error.__context__ or error
    why = f"{type(cause).__name__}: {cause}".strip().rstrip(":").split("\n")[0][:200]
    _unreachable[endpoint] = why
    logger.warning("the Hugging Face hub at %s cannot be reached (%s); further weights in this process "
                   "come from the local cache only, as with HF_HUB_OFFLINE=1", endpoint, why)


def _probe(repo: str, filename: str, endpoint: str) -> None:
    """One HEAD request without retries, the first time an endpoint is used in this process."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    try:
        url = hf_hub_url(repo, filename, endpoint=endpoint)
        get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except _connection_errors() as e:
        _mark_unreachable(endpoint, e)
        return
    except Exception as e:  # noqa: BLE001 - an answer (404, 401, ...): the hub is there
        logger.debug("probe of %s/%s: %s", repo, filename, e)
    _probed.add(endpoint)


def _download(repo: str, filename: str, cache: Path, offline: bool) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    endpoint = _endpoint()
    if not offline and endpoint not in _unreachable and endpoint not in _probed:
        _probe(repo, filename, endpoint)
    local_only = offline or endpoint in _unreachable
    try:
        return hf_hub_download(repo_id=repo, filename=filename, cache_dir=str(cache),
                               local_files_only=local_only, endpoint=endpoint)
    except LocalEntryNotFoundError as e:  # not cached, and online: the look-up on the hub failed
        if not local_only and isinstance(e.__cause__, _connection_errors()):  # with no answer at all
            _mark_unreachable(endpoint, e)
        raise
    except _connection_errors() as e:
        if not local_only:
            _mark_unreachable(endpoint, e)
        raise


def fetch_first(repo: str, candidates: tuple[str, ...], cache: Path, name: str | None) -> Path:
    """Download the first candidate the repo has; a `.bin` is tried only if the safetensors file
    is absent from the repo (or, offline, absent from the cache)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = is_offline()
    missing_remote, unreachable = [], []
    last: Exception | None = None
    for fname in candidates:
        try:
            path = Path(_download(repo, fname, cache, offline))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, *_connection_errors()) as e:  # no hub/cache
            unreachable.append(fname)
            last = e
            continue
        except EntryNotFoundError as e:  # the repo does not have this file: try the next one
            missing_remote.append(fname)
            last = e
            continue
        except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
            raise WeightsNotFoundError(
                _how_to_get(repo, candidates, name, cache, f"the repo is missing, private or gated ({e})")
            ) from e
        except OSError as e:  # network failures that huggingface_hub let through
            unreachable.append(fname)
            last = e
            continue
        if fname.endswith(".index.json"):
            _fetch_shards(repo, path, cache, offline, candidates, name)
        return path
    if unreachable:
        if offline:
            why = "offline mode is on (HF_HUB_OFFLINE) and they are not in the local cache"
        elif hub_unreachable():
            why = (f"the hub at {_endpoint()} could not be reached ({hub_unreachable()}) and they are not in "
                   "the local cache (this process now uses the local cache only, as with HF_HUB_OFFLINE=1)")
        else:
            why = "the hub could not be reached and they are not in the local cache"
    else:
        why = "the repo has none of these files"
    raise WeightsNotFoundError(_how_to_get(repo, candidates, name, cache, why)) from last


def _fetch_shards(repo: str, index: Path, cache: Path, offline: bool, candidates, name) -> None:
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        subdir = str(Path(index.relative_to(_snapshot_root(index))).parent)
        fname = shard if subdir in ("", ".") else f"{subdir}/{shard}"
        try:
            _download(repo, fname, cache, offline)
        except Exception as e:
            why = f"shard {fname}: {e}"
            raise WeightsNotFoundError(_how_to_get(repo, candidates, name, cache, why)) from e


def _snapshot_root(path: Path) -> Path:
    for parent in path.parents:
        if parent.parent.name == "snapshots":
            return parent
    return path.parent


def _fetch_optional(repo: str, files: tuple[str, ...], cache: Path) -> list[str]:
    """Config and tokenizer files: fetched when the repo has them, skipped otherwise."""
    got = []
    for fname in files:
        try:
            got.append(_download(repo, fname, cache, is_offline()))
        except Exception as e:  # noqa: BLE001 - optional files; the weights decide success
            logger.debug("optional file %s of %s not fetched: %s", fname, repo, e)
    return got


def _config_for(weights_name: str) -> str:
    return "open_clip_config.json" if Path(weights_name).name.startswith("open_clip") else "config.json"


def _parse_hf_spec(spec: str) -> tuple[str, str | None]:
    parts = [p for p in spec.split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"hf-hub:{spec}: expected hf-hub:org/repo or hf-hub:org/repo/path/to/file")
    repo = "/".join(parts[:2])
    return repo, ("/".join(parts[2:]) or None)


def _fetch_pretrained(pre: PretrainedCfg, cache: Path) -> Path:
    if pre.local_path is not None:
        if not pre.local_path.is_file():
            raise FileNotFoundError(f"{pre.name}: the shipped weights {pre.local_path} are missing; "
                                    "reinstall ovss (they are package data)")
        return pre.local_path
    weights = fetch_first(pre.hf_hub_id, pre.weights, cache, pre.name)
    _fetch_optional(pre.hf_hub_id, pre.extra_files, cache)
    return weights


def resolve_weights(source: str | os.PathLike | PretrainedCfg, cache_dir: str | os.PathLike | None = None,
                    files: tuple[str, ...] | list[str] | None = None) -> Path:
    """A local path holding the weights named by `source` (downloading hub files if needed).

    Args:
        source: see the module docstring for the accepted forms.
        cache_dir: hub cache to use instead of HF_HUB_CACHE / HF_HOME.
        files: weight-file candidates (best first) for an `hf-hub:org/repo` source.
    Returns:
        A weights file, or a local model folder as given. Hub downloads also fetch the matching
        config and tokenizer files into the same snapshot folder, when the repo has them.
    Raises:
        FileNotFoundError: a local path that does not exist, or a source that is none of the forms.
        WeightsNotFoundError: hub weights unavailable (offline and not cached, missing repo/file).
    """
    cache = hub_cache_dir(cache_dir)
    if isinstance(source, PretrainedCfg):
        return _fetch_pretrained(source, cache)
    s = os.fspath(source)
    if s.startswith("local-dir:"):
        p = Path(s[len("local-dir:"):]).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"weights not found: {p} (from {s})")
        return p
    if s.startswith("hf-hub:"):
        repo, filename = _parse_hf_spec(s[len("hf-hub:"):])
        if filename:
            path = fetch_first(repo, (filename,), cache, None)
            _fetch_optional(repo, (_config_for(filename), *TOKENIZER_FILES), cache)
            return path
        candidates = tuple(files) if files else DEFAULT_HUB_WEIGHTS
        path = fetch_first(repo, candidates, cache, None)
        _fetch_optional(repo, (_config_for(path.name), *TOKENIZER_FILES), cache)
        return path
    p = Path(s).expanduser()
    if p.exists():
        return p
    key = resolve_name(s)
    if key is not None:
        return _fetch_pretrained(get_pretrained(key), cache)
    if p.suffix or os.sep in s or "/" in s:
        raise FileNotFoundError(f"weights not found: {p} (no such file or folder)")
    raise FileNotFoundError(
        f"weights not found: {s!r} is not an existing file or folder, a registered backbone name "
        "(list_backbones()), an 'hf-hub:org/repo' or a 'local-dir:/path' spec"
    )


def download(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Fetch everything a registered backbone needs (weights, config, tokenizer) ahead of time.

    This is what `ovss download NAME` runs on a machine with network access; afterwards the
    backbone loads offline from the cache. Returns the snapshot folder holding the files.
    DINO / DINOv2 names (dino-vitb8, ..., or `timm:<name>` for the timm form) work too.
    """
    if resolve_name(name) is None:
        from .dino_pretrained import DINO_PRETRAINED, resolve_dino_name
        from .found_pretrained import resolve_found_name

        if resolve_found_name(name) is not None:  # a FOUND decoder: a file of its GitHub repository
            return download_found(resolve_found_name(name), cache_dir).parent

        key = resolve_dino_name(name.removeprefix("timm:"))
        if key is not None:
            dino = DINO_PRETRAINED[key]
            repo = dino.timm_hub_id if name.startswith("timm:") else dino.hf_hub_id
            return fetch_first(repo, dino.weights, hub_cache_dir(cache_dir), name).parent
    pre = get_pretrained(name)
    if pre.local_path is not None:  # shipped with the package: nothing to download
        return _fetch_pretrained(pre, Path()).parent
    cache = hub_cache_dir(cache_dir)
    weights = fetch_first(pre.hf_hub_id, pre.weights, cache, pre.name)
    got = _fetch_optional(pre.hf_hub_id, pre.extra_files, cache)
    missing = [f for f in pre.extra_files if not any(Path(g).name == f for g in got)]
    if missing:
        import warnings

        warnings.warn(f"{pre.hf_hub_id}: could not fetch {', '.join(missing)}", stacklevel=2)
    return weights.parent


def found_cache_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `ovss download NAME` puts a released FOUND decoder (the hub cache's `found/` folder):
    it is a file of a GitHub repository, not of the Hugging Face hub."""
    from .found_pretrained import FOUND_PRETRAINED

    return hub_cache_dir(cache_dir) / "found" / FOUND_PRETRAINED[name].filename


def download_found(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Fetch a released FOUND decoder into the cache (needs network; the file is 3 kB)."""
    import urllib.request

    from .found_pretrained import FOUND_PRETRAINED

    path = found_cache_path(name, cache_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        urllib.request.urlretrieve(FOUND_PRETRAINED[name].url, tmp)  # a fixed https URL
        tmp.replace(path)
    return path
