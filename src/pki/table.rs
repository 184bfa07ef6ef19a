//! Aligned text tables that fit a width, as `kubectl get` prints them: the default view
//! leaves out the columns marked wide-only and shortens the long ones with `…` (the widest
//! first, so they end up about as wide as each other) until the table fits; the wide view
//! (`-o wide`) shows every column in full. Pure.

use std::fmt::Write as _;

/// Two spaces between columns.
const GAP: usize = 2;
/// A shortened column keeps at least this many characters (or its header's width).
const MIN_WIDTH: usize = 12;

/// One column: a header and a cell per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The header, such as `NAME`.
    pub header: &'static str,
    /// The cells, one per row.
    pub cells: Vec<String>,
    /// Shown only in the wide view.
    pub wide_only: bool,
    /// How the column is shortened to fit; `None`: never.
    pub shrink: Option<Cut>,
}

/// Where a shortened cell loses its characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// At the end: `O=kiln, CN=kiln bu…`.
    End,
    /// At the start, for paths, whose end tells them apart: `…client-certs.yaml:cert.pem`.
    Start,
}

impl Column {
    /// A column shown in every view and never shortened.
    pub fn fixed(header: &'static str, cells: Vec<String>) -> Self {
        Self {
            header,
            cells,
            wide_only: false,
            shrink: None,
        }
    }

    /// A column shortened to fit, cut as `cut` says.
    pub fn shrinkable(header: &'static str, cells: Vec<String>, cut: Cut) -> Self {
        Self {
            shrink: Some(cut),
            ..Self::fixed(header, cells)
        }
    }

    /// This column, shown only in the wide view.
    pub fn wide(self) -> Self {
        Self {
            wide_only: true,
            ..self
        }
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `width` characters, one of them `…` when it was cut.
fn cut(s: &str, width: usize, how: Option<Cut>) -> String {
    let len = chars(s);
    if len <= width || width == 0 {
        return s.to_string();
    }
    let keep = width - 1;
    match how {
        Some(Cut::Start) => {
            let end: String = s.chars().skip(len - keep).collect();
            format!("…{end}")
        }
        _ => {
            let mut out: String = s.chars().take(keep).collect();
            out.push('…');
            out
        }
    }
}

/// The table in `width` columns of text, or every column in full when `width` is `None`.
/// When even the shortest columns do not fit, the lines are as short as they can be.
pub fn render(columns: Vec<Column>, width: Option<usize>) -> String {
    let columns: Vec<Column> = columns
        .into_iter()
        .filter(|c| width.is_none() || !c.wide_only)
        .collect();
    let mut widths: Vec<usize> = columns
        .iter()
        .map(|c| c.cells.iter().map(|s| chars(s)).fold(chars(c.header), usize::max))
        .collect();
    if let Some(width) = width {
        let total: usize = widths.iter().sum::<usize>() + GAP * widths.len().saturating_sub(1);
        let floor = |i: usize| MIN_WIDTH.max(chars(columns[i].header)).min(widths[i]);
        let floors: Vec<usize> = (0..columns.len()).map(floor).collect();
        let mut excess = total.saturating_sub(width);
        // Take one character at a time from the widest column that can still give one.
        while excess > 0 {
            let Some(i) = (0..columns.len())
                .filter(|&i| columns[i].shrink.is_some() && widths[i] > floors[i])
                .max_by_key(|&i| (widths[i], std::cmp::Reverse(i)))
            else {
                break;
            };
            widths[i] -= 1;
            excess -= 1;
        }
    }
    let mut out = String::new();
    let rows = columns.first().map_or(0, |c| c.cells.len());
    let line = |cells: Vec<&str>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .zip(&columns)
            .map(|((cell, &w), column)| format!("{:<w$}", cut(cell, w, column.shrink)))
            .collect();
        let _ = writeln!(out, "{}", text.join(&" ".repeat(GAP)).trim_end());
    };
    line(columns.iter().map(|c| c.header).collect(), &mut out);
    for row in 0..rows {
        line(columns.iter().map(|c| c.cells[row].as_str()).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<Column> {
        vec![
            Column::shrinkable(
                "NAME",
                vec!["a-rather-long-name-of-a-file.yaml".into()],
                Cut::Start,
            ),
            Column::shrinkable("SANS", vec!["x".repeat(200)], Cut::End),
            Column::fixed("DAYS", vec!["80".into()]),
            Column::fixed("ISSUER", vec!["O=kiln".into()]).wide(),
        ]
    }

    #[test]
    fn fits_the_width_by_shortening_the_widest_first() {
        let text = render(columns(), Some(60));
        for line in text.lines() {
            assert!(chars(line) <= 60, "{line:?}");
        }
        assert!(!text.contains("ISSUER"), "wide-only columns are left out");
        // 60 = NAME 26 + SANS 26 + DAYS 4 + two gaps of 2: both shortened to the same width.
        let row = text.lines().nth(1).unwrap();
        assert_eq!(
            row,
            format!("…-long-name-of-a-file.yaml  {}…  80", "x".repeat(25))
        );
    }

    #[test]
    fn wide_shows_everything_in_full() {
        let text = render(columns(), None);
        assert!(text.contains("ISSUER"));
        assert!(text.contains(&"x".repeat(200)));
        assert!(text.contains("a-rather-long-name-of-a-file.yaml"));
    }

    #[test]
    fn too_narrow_is_as_short_as_it_gets() {
        let text = render(columns(), Some(10));
        let header = text.lines().next().unwrap();
        assert_eq!(
            header,
            format!("NAME{}SANS{}DAYS", " ".repeat(10), " ".repeat(10))
        );
    }
}
