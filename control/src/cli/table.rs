//! How the CLI writes tables and numbers: left-aligned columns, weights as operators
//! write them, ages, percentages.

use std::io::Write;

/// A weight as operators write it: `75`, `12.34`.
pub fn fmt_weight(w: f64) -> String {
    format!("{w}")
}

pub fn fmt_weights<'a>(variants: impl Iterator<Item = (&'a str, f64)>) -> String {
    variants
        .map(|(n, w)| format!("{n}={}", fmt_weight(w)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `5s`, `3m 12s`, `2h 5m`, `4d 3h`.
pub fn fmt_age(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 {
        seconds.round() as u64
    } else {
        0
    };
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (c, w) in cells.iter().zip(&widths) {
            s.push_str(c);
            let pad = w.saturating_sub(c.chars().count()) + 2;
            s.push_str(&" ".repeat(pad));
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// A table indented by two spaces.
pub fn indented_table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    table(&mut buf, header, rows)?;
    for line in String::from_utf8_lossy(&buf).lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

/// A share as a percentage with two decimals (`12.34%`), `-` for none.
pub fn pct(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |x| format!("{:.2}%", x * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_tables() {
        assert_eq!(fmt_age(4.4), "4s");
        assert_eq!(fmt_age(192.0), "3m 12s");
        assert_eq!(fmt_age(7500.0), "2h 5m");
        assert_eq!(fmt_age(f64::NAN), "0s");
        assert_eq!(fmt_weight(75.0), "75");
        assert_eq!(fmt_weight(12.34), "12.34");
        let mut buf = Vec::new();
        table(
            &mut buf,
            &["A", "BB"],
            &[vec!["long-name".into(), "x".into()]],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "A          BB\nlong-name  x\n"
        );
    }
}
