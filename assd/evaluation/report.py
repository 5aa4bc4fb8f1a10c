"""Text rendering of an ``EvalResult``: the paper's Table 4 layout (mAP, then one column per class)."""

from __future__ import annotations


def ap_table(result, class_names, width: int = 100) -> str:
    """mAP and per-class AP in percent, one row of class columns, wrapped into blocks of ``width`` chars.

    ``class_names`` fixes the column order (classes without ground truth show ``-``).
    """
    columns = [("mAP", f"{100 * result.mAP:.1f}")]
    for name in class_names:
        ap = result.per_class.get(name)
        columns.append((name, "-" if ap is None else f"{100 * ap:.1f}"))
    blocks, header, values = [], "", ""
    for name, value in columns:
        cell = max(len(name), len(value), 5) + 1
        if header and len(header) + cell > width:
            blocks.append(f"{header}\n{values}")
            header, values = "", ""
        header += name.rjust(cell)
        values += value.rjust(cell)
    blocks.append(f"{header}\n{values}")
    return "\n\n".join(blocks)
