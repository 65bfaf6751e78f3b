"""What a technician sees: rich tables, the verdict line, paths to a meter, the mesh tree.

Pure functions from results to rich renderables; the CLI decides where they go (stdout) and
keeps progress displays on stderr, so ``--json`` output stays clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from firmware_agent.diag.check import LinkCheck, Verdict
from firmware_agent.diag.check import mesh_notes as check_notes

STATUS_STYLE = {"ok": "green", "low": "red", "no_answer": "red", "unknown": "yellow"}
COLOUR_STYLE = {"green": "green", "orange": "dark_orange", "red": "red"}


def _f(value: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def _etx(value: float | None) -> str:
    return "–" if value is None else f"{value / 128:.2f}"


def snr_table(
    title: str, checks: list[LinkCheck], threshold_db: float, *, notes: Sequence[str] = ()
) -> Table:
    table = Table(title=title, title_justify="left")
    for col, justify in (
        ("neighbour", "left"),
        ("meter", "left"),
        ("RSSI dBm", "right"),
        ("noise floor dBm", "right"),
        ("SNR dB (in/out)", "right"),
        ("RSL in/out dBm", "right"),
        ("ETX", "right"),
        ("probes", "right"),
        ("status", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for c in checks:
        style = STATUS_STYLE.get(c.status, "")
        snr = Text(_f(c.snr_db), style=style)
        snr.append(f" ({_f(c.snr_in_db)}/{_f(c.snr_out_db)})", style="dim")
        status = Text(c.status.replace("_", " "), style=style)
        if c.colour:
            status.append(" ●", style=COLOUR_STYLE.get(c.colour, ""))
        probes = "–" if c.probes_sent is None else f"{c.probes_acked}/{c.probes_sent}"
        table.add_row(
            c.neighbour,
            c.meter_id or "",
            _f(c.rssi_dbm),
            _f(c.noise_floor_dbm),
            snr,
            f"{_f(c.rsl_in_dbm)}/{_f(c.rsl_out_dbm)}",
            _etx(c.etx),
            probes,
            status,
        )
    first = f"threshold {threshold_db:g} dB; SNR is the weaker direction; ETX 1.00 = no retries"
    table.caption = "\n".join([first, *notes])
    return table


def verdict_line(result: Verdict) -> Text:
    style = "bold green" if result.exit_code == 0 else "bold red"
    mark = "PASS" if result.exit_code == 0 else "FAIL"
    return Text(f"{mark}: {result.text}", style=style)


def error_line(gateway: str, kind: str, reason: str) -> Text:
    return Text(f"ERROR ({kind.replace('_', ' ')}): {gateway}: {reason}", style="bold red")


def _hop_name(hop: dict[str, Any]) -> str:
    return str(hop.get("meter_id") or hop.get("mac"))


def paths_view(doc: dict[str, Any]) -> Table | Text:
    """``view-mesh --meter-id``: every valid path, the preferred one marked, SNR per hop."""
    paths = doc.get("paths") or []
    meter = doc.get("meter_id")
    if not paths:
        return Text(
            f"meter {meter}: no valid path known (not joined, or its DAO has expired)",
            style="bold red",
        )
    table = Table(
        title=f"{doc.get('gateway_id')}: {len(paths)} valid path(s) to meter {meter}",
        title_justify="left",
    )
    for col in ("", "#", "hops", "path (SNR dB per link)", "worst SNR", "cost", "state"):
        table.add_column(col)
    for n, path in enumerate(paths, 1):
        hops = path.get("hops") or []
        links = path.get("links") or []
        route = Text(_hop_name(hops[0]) if hops else "?")
        for hop, link in zip(hops[1:], links, strict=False):
            snr = link.get("snr_db")
            route.append(f" —{_f(snr, '{:.0f}')}→ ", style="dim" if snr is not None else "yellow")
            route.append(_hop_name(hop))
        if path.get("usable"):
            state = (
                Text("recovering", style="yellow")
                if path.get("recovering")
                else Text("usable", style="green")
            )
        else:
            state = Text("unusable: " + "; ".join(path.get("reasons") or []), style="red")
        table.add_row(
            Text("★", style="bold green") if path.get("preferred") else "",
            str(n),
            str(max(0, len(hops) - 1)),
            route,
            _f(path.get("worst_snr_db")),
            f"{path.get('cost', 0):.2f}",
            state,
        )
    first = "★ preferred (the route downward traffic takes now)"
    table.caption = "\n".join([first, *check_notes(doc.get("mesh") or {})])
    return table


def mesh_tree(doc: dict[str, Any], gateway: str) -> Tree:
    """``hes-diag mesh``: the DODAG as the preferred paths draw it, unreachable nodes apart."""
    root = doc.get("root")
    tree = Tree(Text(f"{gateway} (root {root})", style="bold"))
    names: dict[str, str] = {str(root): gateway}
    children: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    orphans: list[dict[str, Any]] = []
    for row in doc.get("routes") or []:
        node = str(row.get("node"))
        names[node] = str(row.get("meter_id") or node)
        pref = row.get("preferred")
        hops = (pref or {}).get("hops") or []
        if len(hops) >= 2:
            children.setdefault(str(hops[-2]), []).append((node, row))
        else:
            orphans.append(row)

    def label(node: str, row: dict[str, Any]) -> Text:
        pref = row.get("preferred") or {}
        snr = pref.get("worst_snr_db")
        text = Text(names.get(node, node))
        text.append(f"  {node}", style="dim")
        text.append(f"  worst SNR {_f(snr)} dB", style="" if pref.get("usable", True) else "red")
        if row.get("paths", 0) > 1:
            text.append(f"  {row['paths']} paths", style="cyan")
        if row.get("state") not in (None, "ok"):
            text.append(f"  {row['state']}", style="red")
        return text

    def grow(branch: Tree, parent: str, depth: int) -> None:
        for node, row in sorted(children.get(parent, []), key=lambda x: names.get(x[0], x[0])):
            sub = branch.add(label(node, row))
            if depth < 64:
                grow(sub, node, depth + 1)

    grow(tree, str(root), 0)
    if orphans:
        lost = tree.add(Text("no path to the root", style="red"))
        for row in orphans:
            lost.add(label(str(row.get("node")), row))
    return tree


def device_noise_table(noise: dict[int, float]) -> Table:
    table = Table(title="noise floor per channel (energy scan)", title_justify="left")
    table.add_column("channel", justify="right")
    table.add_column("MHz", justify="right")
    table.add_column("dBm", justify="right")
    for ch in sorted(noise):
        table.add_row(str(ch), f"{902.2 + 0.2 * ch:.1f}", f"{noise[ch]:.0f}")
    return table
