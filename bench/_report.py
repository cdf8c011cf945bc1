"""The Markdown report: settings and machine, one table per section, the ceiling check,
and every skipped or failed row with its reason."""
from __future__ import annotations

from bench import _honesty as honesty
from bench._stats import _median, fmt_num, fmt_pct, fmt_ratio, fmt_stats


def _status_cell(r: dict) -> str | None:
    if r["status"] == "ok":
        return None
    return f"{r['status']}: {r['reason']}"


_KIND_LABEL = {"ceiling": "ceiling", "end_to_end": "end to end", "reference": "**reference-style**"}


def render_markdown(res: dict) -> str:
    """The human report: settings, then one table per section, then every skipped/failed row."""
    s, m = res["settings"], res["machine"]
    gpu = f"{m['gpu_count']} x {m['gpu']}" if m["gpu"] else "no GPU"
    L = [f"# fastairl throughput: {res['host']}, {res['created'][:16].replace('T', ' ')}", "",
         f"Command: `{res['command']}`", "",
         f"Machine: {m['cpu_count']} CPU cores, {gpu}, Python {m['python']}, torch {m['torch']}, "
         f"torchvision {m['torchvision']}, device `{s['device']}`", "",
         f"Settings: {', '.join(s['exps'])} at {s['arch']}/{s['image_size']} px, batch {s['batch_size']} per "
         f"process; warm-up {s['warmup']} batch(es), then {s['repeats']} windows of {s['batches']} steps "
         f"({s['loader_batches']} batches for loaders); numbers are the median [min-max] over the windows. "
         f"Workers: {s['folder_workers']} for the reference-style folder loader, {s['fast_workers']} threads for "
         f"the other backends.", "",
         f"Data: {s['data']} ({s['data_kind']}); packed: {s['packed'] or 'none (' + str(s['packed_reason']) + ')'}",
         "", honesty.load_line(res), ""]
    if res["loaders"]:
        recipe = next((r.get("recipe") for r in res["loaders"] if r.get("recipe")), "")
        L += [f"## Loaders (recipe {recipe}, decoded views per second counted as pairs/s)", "",
              "| loader | decode | workers | loader only, pairs/s | full path (+ GPUAugment), pairs/s "
              "| full path vs reference | peak RSS MB (processes) |",
              "|---|---|---|---|---|---|---|"]
        for r in res["loaders"]:
            note = _status_cell(r)
            if note:
                L.append(f"| {r['name']} | {r['decode']} | {r['workers']} | {note} | | | |")
                continue
            full = "same (augments in its workers)" if r["full_path_same"] else fmt_stats(r["full_path"])
            rss = r["peak_rss"]
            rss_s = "-" if not rss else f"{rss['total_mb']:,.0f} ({1 + rss['worker_processes']})"
            ref = " (reference)" if r["backend"] == "folder" else ""
            L.append(f"| {r['name']}{ref} | {r['decode']} | {r['workers']} | {fmt_stats(r['loader_only'])} | {full} "
                     f"| {fmt_ratio(r['ratio_to_reference'])} | {rss_s} |")
        L.append("")
    if res["augment"]:
        L += ["## Augmentation module (GPUAugment on synthetic uint8 views)", "",
              "| recipe | device | batch | ms per batch | ms per 256 images | pairs/s |", "|---|---|---|---|---|---|"]
        for r in res["augment"]:
            note = _status_cell(r)
            if note:
                L.append(f"| {r['recipe']} | {r['device']} | {r['batch_size']} | {note} | | |")
                continue
            L.append(f"| {r['recipe']} | {r['device']} | {r['batch_size']} | {fmt_stats(r['ms_per_batch'])} "
                     f"| {fmt_stats(r['ms_per_256'])} | {fmt_stats(r['pairs_per_s'])} |")
        L.append("")
    if res["train"]:
        L += ["## Training step (Trainer.train_step; images/s, an image counted once with all its views)", "",
              "| exp | row | loader | precision / layout | images/s | step ms | data wait | peak GPU MB "
              "| vs reference | of ceiling |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["train"]:
            kind = _KIND_LABEL[r["kind"]]
            note = _status_cell(r)
            if note:
                L.append(f"| {r['exp']} | {kind} | {r['loader']} | {r['config']} | {note} | | | | | |")
                continue
            mem = "-" if r["peak_device_mem_mb"] is None else f"{r['peak_device_mem_mb']:,.0f}"
            L.append(f"| {r['exp']} | {kind} | {r['loader']} | {r['config']} | {fmt_stats(r['images_per_s'])} "
                     f"| {fmt_num(_median(r['step_ms']))} | {fmt_pct(r['data_wait_share'])} | {mem} "
                     f"| {fmt_ratio(r['ratio_to_reference'])} | "
                     f"{honesty.ceiling_cell(r)} |")
        L.append("")
        L += honesty.check_lines(res)
    if res["scaling"]:
        n = res["settings"]["nproc"]
        L += [f"## Scaling: {n} processes under torchrun vs one", "",
              "| exp | row | loader | precision / layout | 1 process, images/s | total, images/s | per process "
              "| efficiency |", "|---|---|---|---|---|---|---|---|"]
        for r in res["scaling"]:
            note = _status_cell(r)
            if note:
                L.append(f"| {r.get('exp') or '-'} | {_KIND_LABEL.get(r.get('kind'), '-')} | {r.get('loader', '-')} "
                         f"| {r.get('config', '-')} | {note} | | | |")
                continue
            eff = "-" if r["efficiency"] is None else f"{r['efficiency']:.0%}"
            L.append(f"| {r['exp']} | {_KIND_LABEL[r['kind']]} | {r['loader']} | {r['config']} "
                     f"| {fmt_stats(r['single_process_images_per_s'])} | {fmt_stats(r['total_images_per_s'])} "
                     f"| {fmt_stats(r['per_process_images_per_s'])} | {eff} |")
        L.append("")
    skipped = [(sec, r) for sec in ("loaders", "augment", "train", "scaling") for r in res[sec]
               if r["status"] != "ok"]
    if skipped:
        L += ["## Skipped and failed rows", ""]
        L += [f"- {sec}: {r['name']}: **{r['status']}**: {r['reason']}" for sec, r in skipped]
        L.append("")
    out = res.get("outputs", {})
    if out.get("png_status") == "skipped":
        L += [f"Chart: skipped ({out['png_reason']}).", ""]
    return "\n".join(L + [honesty.wall_line(res)])
