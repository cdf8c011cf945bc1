"""The result record: its schema, the ratios filled in after measuring (to the
reference-style rows and to the ceiling), and the check that a result follows the schema
before it is written."""
from __future__ import annotations

from bench import _honesty as honesty
from bench._stats import _median, ratio

SCHEMA = "fastairl.bench.throughput/1"


STATUSES = ("ok", "skipped", "failed")


def compute_ratios(result: dict) -> None:
    """Fill ``ratio_to_reference`` and ``fraction_of_ceiling`` of every row, in place.

    Loader rows: the full path's median pairs/s over the ``folder`` (reference-style)
    loader's. Training rows: median images/s over the same experiment's reference-style
    row (fp32, NCHW, folder loader), and for end-to-end rows over the ceiling row of the
    same experiment, precision, layout and compile setting. ``ceiling_check``: which
    end-to-end rows measured above their ceiling (:func:`bench._honesty.check_ceilings`).
    """
    loaders = result.get("loaders", [])
    ref = next((r for r in loaders if r["backend"] == "folder" and r["status"] == "ok"), None)
    ref_v = _median(ref["full_path"]) if ref else None
    for r in loaders:
        r["ratio_to_reference"] = ratio(_median(r.get("full_path")), ref_v) if r["status"] == "ok" else None
    train = result.get("train", [])
    for r in train:
        r["ratio_to_reference"] = None
        r["fraction_of_ceiling"] = None
        if r["status"] != "ok":
            continue
        ref = next((x for x in train if x["exp"] == r["exp"] and x["kind"] == "reference" and x["status"] == "ok"),
                   None)
        r["ratio_to_reference"] = ratio(_median(r["images_per_s"]), _median(ref["images_per_s"]) if ref else None)
        if r["kind"] != "ceiling":
            same = (r["exp"], "ceiling", "ok", r["amp"], r["channels_last"], r["compile"])
            ceil = next((x for x in train if (x["exp"], x["kind"], x["status"], x["amp"], x["channels_last"],
                                              x["compile"]) == same), None)
            r["fraction_of_ceiling"] = ratio(_median(r["images_per_s"]),
                                             _median(ceil["images_per_s"]) if ceil else None)
    result["ceiling_check"] = honesty.check_ceilings(train)  # rows above their ceiling: said, never hidden


def validate_result(res: dict) -> None:
    """Raise ValueError if ``res`` does not follow :data:`SCHEMA` (used by the tests and before writing)."""
    for key in ("schema", "created", "host", "command", "machine", "settings", "loaders", "augment", "train",
                "scaling", "outputs"):
        if key not in res:
            raise ValueError(f"result lacks {key!r}")
    if res["schema"] != SCHEMA:
        raise ValueError(f"schema {res['schema']!r} is not {SCHEMA!r}")
    for sec in ("loaders", "augment", "train", "scaling"):
        for r in res[sec]:
            if r.get("status") not in STATUSES:
                raise ValueError(f"{sec} row {r.get('name')!r} has status {r.get('status')!r}")
            if r["status"] != "ok" and not r.get("reason"):
                raise ValueError(f"{sec} row {r.get('name')!r} is {r['status']} without a reason")
    for r in res["loaders"]:
        if r["status"] == "ok":
            _check_stats(r["loader_only"], f"loader {r['name']}")
            _check_stats(r["full_path"], f"loader {r['name']}")
    for r in res["train"]:
        if r["status"] == "ok":
            for k in ("images_per_s", "step_ms", "data_wait_share"):
                _check_stats(r[k], f"train {r['name']} {k}")


def _check_stats(st: dict | None, what: str) -> None:
    if not isinstance(st, dict) or not {"median", "min", "max", "n", "values"} <= set(st):
        raise ValueError(f"{what}: expected median/min/max/n/values, got {st!r}")
    if not st["min"] <= st["median"] <= st["max"] or st["n"] != len(st["values"]):
        raise ValueError(f"{what}: inconsistent statistics {st!r}")
