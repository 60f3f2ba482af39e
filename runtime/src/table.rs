//! Aligned plain-text tables for `Display` reports.

use std::fmt;

/// Renders a multi-line report with `render` and writes it without its
/// last newline: printing a report (`println!`) adds one, as for any
/// `Display` value.
pub(crate) fn lines(
    f: &mut fmt::Formatter<'_>,
    render: impl FnOnce(&mut String) -> fmt::Result,
) -> fmt::Result {
    let mut out = String::new();
    render(&mut out)?;
    f.write_str(out.strip_suffix('\n').unwrap_or(&out))
}

/// Writes `headers` and `rows` as left-aligned columns separated by two
/// spaces, each line ended by a newline.
pub(crate) fn write_table<const N: usize>(
    f: &mut impl fmt::Write,
    headers: &[&str; N],
    rows: &[[String; N]],
) -> fmt::Result {
    let mut widths = headers.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| -> fmt::Result {
        let mut out = String::new();
        for (i, (cell, width)) in cells.zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(f, "{}", out.trim_end())
    };
    line(&mut headers.iter().copied())?;
    for row in rows {
        line(&mut row.iter().map(String::as_str))?;
    }
    Ok(())
}
