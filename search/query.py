"""Embedding query files with exactly the configuration a collection records."""

from __future__ import annotations

import json
import os

import numpy as np

from embedkit import results
from embedkit.extractors.base import ConfigError
from embedkit.search.collection import CollectionInfo, SearchError, describe_config, vectors_from_array


class QueryEmbedder:
    """Embeds query files with exactly the configuration recorded in a collection (plugin, params,
    weights)."""

    def __init__(self, info: CollectionInfo, device: str = "cpu") -> None:
        from embedkit import registry

        cfg = info.config
        self.info = info
        self.meta = info.frames
        weights = cfg.get("weights_setting")
        try:
            # parameters a plugin gained since the index was built take the defaults it had before
            params = registry.get(cfg["extractor"]).params_as_recorded(cfg["params"]) or {}
            self.extractor = registry.create(cfg["extractor"], device=device, weights_path=weights, **params)
        except ConfigError as exc:
            raise ConfigError(f"cannot recreate the index's model {describe_config(cfg)}: {exc}") from exc
        if json.loads(json.dumps(self.extractor.config)) != params:
            raise ConfigError(
                f"this version of {cfg['extractor']} would embed queries with {self.extractor.config}, but "
                f"the index was built with {cfg['params']}; re-extract and rebuild the index"
            )
        self._checked = False

    def _check_weights(self) -> None:
        if self._checked:
            return
        self.extractor.load()
        want = self.info.config.get("weights_sha256")
        have = (self.extractor.provenance() or {}).get("weights_sha256")
        if want and have and want != have:
            raise ConfigError(
                f"the {self.info.config['extractor']} weights found now (sha256 {have[:12]}) differ from "
                f"those that made the index ({want[:12]}); point weights: at the original file"
            )
        self._checked = True

    def embed(self, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit query vector(s) of one file, cut like the collection (file: one; segment: its windows)."""
        from embedkit import media, pipeline

        self._check_weights()
        shown = results.display_name(path)
        try:
            feats = pipeline.extract_file(self.extractor, path)
        except ConfigError:
            raise
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            raise SearchError(
                f"cannot embed {shown}: {type(exc).__name__}: {lines[-1] if lines else ''}"
            ) from exc
        data = np.asarray(feats.data)
        spec = self.extractor.output_spec(media.kind_of(path) or "audio")  # an image model's video: (T, D)
        hop = spec.hop_seconds or self.meta.get("hop_seconds")

        def spans(n: int) -> np.ndarray:
            if feats.timestamps is not None and len(feats.timestamps) == n:
                t = np.asarray(feats.timestamps, np.float64)
            else:
                t = float(spec.first_frame_seconds or 0.0) + np.arange(n) * float(hop or 0.0)
            return results.frame_spans(t, spec.timestamps_file, hop)

        return vectors_from_array(data, list(spec.axes), self.info.level, self.info.window_seconds, spans,
                                  f"{shown}: ")
