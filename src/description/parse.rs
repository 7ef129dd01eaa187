//! Reading XML text into the document model with quick-xml.
//!
//! Safety: a DOCTYPE is never expanded. One that declares entities
//! (`<!ENTITY`) is rejected, as is any reference to an entity other than the
//! five predefined ones and character references; any other DOCTYPE is kept
//! verbatim and inert. No external resource is ever opened.

use std::path::Path;

use color_eyre::eyre::{bail, eyre, WrapErr};
use color_eyre::Result;
use quick_xml::escape::unescape;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::model::{Attribute, Document, Element, Node};

impl Document {
    /// Parses the file at `path`; errors name the file, line and column.
    pub fn parse_file(path: &Path) -> Result<Document> {
        let bytes = std::fs::read(path).wrap_err_with(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| eyre!("{} is not UTF-8 text", path.display()))?;
        Document::parse_str(&text, &path.display().to_string())
    }

    /// Parses `text`; `origin` names it in errors (`ORIGIN:LINE:COLUMN: ...`).
    pub fn parse_str(text: &str, origin: &str) -> Result<Document> {
        let (bom, body) = match text.strip_prefix('\u{feff}') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        Parser::new(body, origin).run(bom)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

struct Parser<'a> {
    text: &'a str,
    origin: &'a str,
    reader: Reader<&'a [u8]>,
    stack: Vec<Element>,
    prolog: Vec<Node>,
    root: Option<Element>,
    epilog: Vec<Node>,
    /// (byte offset, line) of the last element start, to count lines once.
    cursor: (usize, usize),
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, origin: &'a str) -> Parser<'a> {
        let mut reader = Reader::from_str(text);
        let config = reader.config_mut();
        config.trim_text(false);
        config.expand_empty_elements = false;
        config.check_end_names = true;
        config.check_comments = true;
        Parser {
            text,
            origin,
            reader,
            stack: Vec::new(),
            prolog: Vec::new(),
            root: None,
            epilog: Vec::new(),
            cursor: (0, 1),
        }
    }

    fn error_at(&self, offset: u64, message: impl std::fmt::Display) -> color_eyre::Report {
        let (line, column) = line_col(self.text, usize::try_from(offset).unwrap_or(usize::MAX));
        eyre!("{}:{line}:{column}: {message}", self.origin)
    }

    fn run(mut self, bom: bool) -> Result<Document> {
        loop {
            let start = self.reader.buffer_position();
            let event = match self.reader.read_event() {
                Ok(event) => event,
                Err(e) => {
                    let at = self.reader.error_position();
                    return Err(self.error_at(at, format!("malformed XML: {e}")));
                }
            };
            if matches!(event, Event::Eof) {
                break;
            }
            self.event(event, start)?;
        }
        if let Some(open) = self.stack.last() {
            let message = format!("malformed XML: <{}> from line {} is not closed", open.name, open.line);
            return Err(self.error_at(self.text.len() as u64, message));
        }
        let root = self.root.ok_or_else(|| eyre!("{}: no root element", self.origin))?;
        Ok(Document {
            origin: self.origin.to_string(),
            bom,
            prolog: self.prolog,
            root,
            epilog: self.epilog,
        })
    }

    fn event(&mut self, event: Event<'a>, start: u64) -> Result<()> {
        match event {
            Event::Start(tag) => {
                let element = self.element(&tag, start, false)?;
                self.stack.push(element);
            }
            Event::Empty(tag) => {
                let element = self.element(&tag, start, true)?;
                self.attach(Node::Element(element), start)?;
            }
            Event::End(_) => {
                if let Some(element) = self.stack.pop() {
                    self.attach(Node::Element(element), start)?;
                }
            }
            Event::Text(text) => {
                let raw = self.utf8(&text, start)?;
                if let Err(e) = unescape(&raw) {
                    return Err(self.error_at(start, format!("{e} (entities are never expanded)")));
                }
                self.attach(Node::Text(raw), start)?;
            }
            Event::CData(data) => self.attach(Node::CData(self.utf8(&data, start)?), start)?,
            Event::Comment(text) => self.attach(Node::Comment(self.utf8(&text, start)?), start)?,
            Event::PI(text) => self.attach(Node::Pi(self.utf8(&text, start)?), start)?,
            Event::Decl(text) => self.attach(Node::Decl(self.utf8(&text, start)?), start)?,
            Event::DocType(text) => {
                let raw = self.utf8(&text, start)?;
                if raw.contains("<!ENTITY") {
                    let message = "a DOCTYPE that declares entities is not accepted";
                    return Err(self.error_at(start, message));
                }
                self.attach(Node::DocType(raw), start)?;
            }
            Event::Eof => {}
        }
        Ok(())
    }

    fn utf8(&self, bytes: &[u8], start: u64) -> Result<String> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(self.error_at(start, "malformed XML: not UTF-8")),
        }
    }

    fn attach(&mut self, node: Node, start: u64) -> Result<()> {
        if let Some(parent) = self.stack.last_mut() {
            parent.children.push(node);
            return Ok(());
        }
        let outside = if self.root.is_none() {
            &mut self.prolog
        } else {
            &mut self.epilog
        };
        match node {
            Node::Element(element) if self.root.is_none() => self.root = Some(element),
            Node::Element(element) => {
                let message = format!("malformed XML: a second root element <{}>", element.name);
                return Err(self.error_at(start, message));
            }
            Node::Text(_) | Node::CData(_) if !node.is_blank() => {
                return Err(self.error_at(start, "malformed XML: text outside the root element"));
            }
            node => outside.push(node),
        }
        Ok(())
    }

    /// The 1-based line of byte `offset`; offsets only grow while parsing.
    fn line_of(&mut self, offset: u64) -> usize {
        let offset = usize::try_from(offset).unwrap_or(usize::MAX).min(self.text.len());
        let (from, line) = self.cursor;
        let newlines = self.text.as_bytes()[from.min(offset)..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        self.cursor = (offset, line + newlines);
        self.cursor.1
    }

    fn element(&mut self, tag: &BytesStart<'_>, start: u64, empty: bool) -> Result<Element> {
        let name = self.utf8(tag.name().as_ref(), start)?;
        // quick-xml checks quoting and duplicates; the layout comes from our scan.
        for attribute in tag.attributes() {
            if let Err(e) = attribute {
                return Err(self.error_at(start, format!("malformed XML in <{name}>: {e}")));
            }
        }
        let raw = self.utf8(tag.attributes_raw(), start)?;
        let (attributes, tag_tail) =
            scan_attributes(&raw).map_err(|e| self.error_at(start, format!("<{name}>: {e}")))?;
        let line = self.line_of(start);
        Ok(Element {
            name,
            attributes,
            children: Vec::new(),
            tag_tail,
            self_closing: empty,
            line,
        })
    }
}

/// Splits the raw attribute text of a start tag into attributes with their
/// layout, and the whitespace before the tag's end.
fn scan_attributes(raw: &str) -> Result<(Vec<Attribute>, String)> {
    let mut attributes = Vec::new();
    let mut rest = raw;
    loop {
        let trimmed = rest.trim_start();
        let lead = &rest[..rest.len() - trimmed.len()];
        if trimmed.is_empty() {
            return Ok((attributes, lead.to_string()));
        }
        let name_end = trimmed
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(trimmed.len());
        let name = &trimmed[..name_end];
        let after_eq = trimmed[name_end..].trim_start().strip_prefix('=').map(str::trim_start);
        let Some(after_eq) = after_eq else {
            bail!("attribute {name} has no value")
        };
        let Some(quote) = after_eq.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            bail!("attribute {name} is not quoted");
        };
        let body = &after_eq[1..];
        let Some(close) = body.find(quote) else {
            bail!("attribute {name} is not closed")
        };
        let value_raw = &body[..close];
        attributes.push(Attribute {
            name: name.to_string(),
            value: decode_attr(value_raw).wrap_err_with(|| format!("attribute {name}"))?,
            lead: lead.to_string(),
            raw: Some((quote, value_raw.to_string())),
        });
        rest = &body[close + 1..];
    }
}

/// Decodes an attribute value as an XML parser does: literal whitespace
/// becomes a space, then references are resolved.
fn decode_attr(raw: &str) -> Result<String> {
    let normalised = raw.replace("\r\n", " ").replace(['\r', '\n', '\t'], " ");
    match unescape(&normalised) {
        Ok(value) => Ok(value.into_owned()),
        Err(e) => bail!("{e} (entities are never expanded)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Document> {
        Document::parse_str(text, "t.kiwi")
    }

    #[test]
    fn round_trip_is_byte_identical() {
        let cases = [
            "<image/>",
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!-- OBS-Profiles: @BUILD_FLAVOR@ -->\n<image name=\"x\"/>\n",
            "<image a='1'  b=\"2\"\n       c=\"x &amp; y\" >\n  <!-- c -->\n  <x><![CDATA[<&>]]></x>\n</image>\n<!-- after -->\n",
            "<?xml version='1.0'?><?xml-stylesheet href=\"s.xsl\"?><image><a>&lt;b&gt; &#x41;</a><u:x xmlns:u=\"urn:x\"/></image>",
            "\u{feff}<image>\r\n  <a></a>\r\n</image>\r\n",
            "<!DOCTYPE image>\n<image/>",
            "<!DOCTYPE image SYSTEM \"kiwi.dtd\" [ <!ELEMENT image ANY> ]>\n<image/>",
        ];
        for text in cases {
            let doc = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(doc.to_string(), text);
            assert_eq!(parse(&doc.to_string()).unwrap(), doc);
        }
    }

    #[test]
    fn attribute_values_are_decoded() {
        let doc = parse("<i a=\"x &amp; &quot;y&quot;\" b=\"l1\nl2\" c='&#10;'/>").unwrap();
        let attrs: Vec<_> = doc.root().attrs().collect();
        assert_eq!(attrs, [("a", "x & \"y\""), ("b", "l1 l2"), ("c", "\n")]);
    }

    #[test]
    fn changed_attribute_is_written_escaped() {
        let mut doc = parse("<i  a='1' b='2'/>").unwrap();
        doc.root_mut().set_attr("a", "<\"&\n");
        doc.root_mut().set_attr("n", "new");
        assert_eq!(doc.to_string(), "<i  a=\"&lt;&quot;&amp;&#10;\" b='2' n=\"new\"/>");
        assert_eq!(parse(&doc.to_string()).unwrap().root().attr("a"), Some("<\"&\n"));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let cases = [
            ("<image>\n  <a>\n  </b>\n</image>", "t.kiwi:3:3: malformed XML"),
            ("<image>\n  <a x=1/>\n</image>", "t.kiwi:2:3:"),
            ("<image>\n<a x=\"1\" x=\"2\"/></image>", "t.kiwi:2:1:"),
            ("<image>\n  <a>\n", "<a> from line 2 is not closed"),
            ("<image/>\n<image/>", "t.kiwi:2:1: malformed XML: a second root element"),
            ("text<image/>", "t.kiwi:1:1: malformed XML: text outside"),
            ("<image>\n  a & b\n</image>", "t.kiwi:1:8:"),
            ("<!-- only a comment -->", "t.kiwi: no root element"),
            ("<image><!-- a -- b --></image>", "t.kiwi:1:15: malformed XML"),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn entities_are_never_expanded() {
        let cases = [
            "<!DOCTYPE image [ <!ENTITY x SYSTEM \"file:///etc/passwd\"> ]>\n<image>&x;</image>",
            "<!DOCTYPE image [ <!ENTITY x \"boom\"> ]>\n<image/>",
            "<image>&x;</image>",
            "<image a=\"&x;\"/>",
        ];
        for text in cases {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.starts_with("t.kiwi:"), "{error}");
        }
        let doctype = "<!DOCTYPE image [ <!ELEMENT image ANY> ]>";
        let doc = parse(&format!("{doctype}<image/>")).unwrap();
        assert!(doc.to_string().starts_with(doctype));
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "ab\ncdé\nf";
        let cases = [
            (0, (1, 1)),
            (2, (1, 3)),
            (3, (2, 1)),
            (7, (2, 4)),
            (8, (3, 1)),
            (99, (3, 2)),
        ];
        for (offset, expected) in cases {
            assert_eq!(line_col(text, offset), expected, "offset {offset}");
        }
    }

    #[test]
    fn element_lines_are_recorded() {
        let doc = parse("<?xml version=\"1.0\"?>\n<image>\n\n  <a/>\n</image>").unwrap();
        assert_eq!(doc.root().line(), 2);
        assert_eq!(doc.root().first("a").map(Element::line), Some(4));
    }
}
