//! The one table printer of the CLI: columns with a header and a left or
//! right alignment, each as wide as its longest cell (counted in chars, so
//! non-ASCII text lines up), one space apart; [`Table::render`] gives the
//! text (for tests), [`Table::print`] writes it to standard output. Also the
//! small cell formatters the commands share.

/// How the cells of a column line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

pub use Align::{Left, Right};

/// Rows of text cells under named columns.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
    indent: String,
    show_header: bool,
}

impl Table {
    /// A table with these columns (header, alignment), in order.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|(h, _)| h.to_string()).collect(),
            aligns: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
            indent: String::new(),
            show_header: true,
        }
    }

    /// Every line starts with `indent`.
    pub fn indent(mut self, indent: &str) -> Table {
        self.indent = indent.to_string();
        self
    }

    /// No header line (the headers then only count for nothing: widths come
    /// from the cells alone).
    pub fn headless(mut self) -> Table {
        self.show_header = false;
        self
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(Into::into)
            .take(self.headers.len())
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = if self.show_header {
            self.headers.iter().map(|h| h.chars().count()).collect()
        } else {
            vec![0; self.headers.len()]
        };
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        widths
    }

    fn line(&self, out: &mut String, cells: &[String], widths: &[usize]) {
        let mut line = self.indent.clone();
        for (i, ((cell, width), align)) in cells.iter().zip(widths).zip(&self.aligns).enumerate() {
            if i > 0 {
                line.push(' ');
            }
            let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
            match align {
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
        }
        let keep = line.trim_end().len().max(self.indent.len());
        line.truncate(keep);
        out.push_str(&line);
        out.push('\n');
    }

    /// The table as text, one line per row (after the header), each ending
    /// in a newline; no trailing spaces.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        if self.show_header {
            self.line(&mut out, &self.headers, &widths);
        }
        for row in &self.rows {
            self.line(&mut out, row, &widths);
        }
        out
    }

    /// Writes [`Table::render`] to standard output.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// `yes` or `no`.
pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The value, or `-` when there is none.
pub fn dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// Bytes as a short human figure (binary units).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_left_and_right() {
        let mut t = Table::new(&[("NAME", Left), ("N", Right), ("NOTE", Left)]);
        t.row(["a", "1", "x"]);
        t.row(["bbbbbb", "100", "longer note"]);
        assert_eq!(
            t.render(),
            "NAME     N NOTE\n\
             a        1 x\n\
             bbbbbb 100 longer note\n"
        );
    }

    #[test]
    fn width_comes_from_the_longest_cell_or_header() {
        let mut t = Table::new(&[("LONG HEADER", Left), ("B", Left)]);
        t.row(["x", "y"]);
        assert_eq!(t.render(), "LONG HEADER B\nx           y\n");
        let mut t = Table::new(&[("A", Right), ("B", Left)]);
        t.row(["12345", "y"]);
        assert_eq!(t.render(), "    A B\n12345 y\n");
    }

    #[test]
    fn widths_count_chars_not_bytes() {
        let mut t = Table::new(&[("NODE", Left), ("V", Right)]);
        t.row(["zürich-ß", "1"]);
        t.row(["ab", "22"]);
        t.row(["日本", "3"]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "zürich-ß  1");
        assert_eq!(lines[2], "ab       22");
        assert_eq!(lines[3], "日本        3");
        for l in &lines {
            assert_eq!(l.chars().count(), "zürich-ß  1".chars().count(), "{l}");
        }
    }

    #[test]
    fn indent_headless_and_ragged_rows() {
        let mut t = Table::new(&[("A", Left), ("B", Right), ("C", Left)]).indent("  ");
        t.row(["x"]);
        t.row(["y", "10", "z", "dropped"]);
        assert_eq!(t.render(), "  A  B C\n  x\n  y 10 z\n");
        let mut t = Table::new(&[("WIDE HEADER", Left), ("B", Left)]).headless();
        t.row(["a", "b"]);
        assert_eq!(t.render(), "a b\n");
        assert_eq!(Table::new(&[("A", Left)]).render(), "A\n");
    }

    #[test]
    fn cells() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(yes_no(true), "yes");
        assert_eq!(dash(&None), "-");
        assert_eq!(dash(&Some("v".into())), "v");
    }
}
