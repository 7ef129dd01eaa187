//! The document model: an ordered tree that keeps everything of the source.
//!
//! Parsed values keep their raw source form next to the decoded one, so an
//! unchanged document is written back byte for byte; a value changed through
//! the API is written escaped in a canonical form.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::path::Path;

use color_eyre::eyre::WrapErr;
use color_eyre::Result;
use quick_xml::escape::unescape;

/// One node of the document, in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// An element with its attributes and children.
    Element(Element),
    /// Character data as written in the source: references are still escaped.
    Text(String),
    /// The content of a `<![CDATA[...]]>` section.
    CData(String),
    /// The content of a `<!--...-->` comment.
    Comment(String),
    /// The content of a processing instruction `<?...?>`.
    Pi(String),
    /// The content of the XML declaration `<?xml ...?>`, starting with `xml`.
    Decl(String),
    /// The content of `<!DOCTYPE ...>` (leading whitespace trimmed); kept,
    /// never interpreted.
    DocType(String),
}

impl Node {
    /// A text node holding `value`, escaped for writing.
    pub fn text(value: &str) -> Node {
        Node::Text(escape_text(value))
    }

    /// The element, when this node is one.
    pub fn as_element(&self) -> Option<&Element> {
        match self {
            Node::Element(e) => Some(e),
            _ => None,
        }
    }

    /// Whether this node is text made only of whitespace (indentation).
    pub fn is_blank(&self) -> bool {
        matches!(self, Node::Text(t) if t.chars().all(char::is_whitespace))
    }
}

/// An attribute with its decoded value and, when parsed, its source form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attribute {
    /// The qualified name as written, e.g. `xmlns:xsi`.
    pub(crate) name: String,
    /// The value with references resolved and whitespace normalised.
    pub(crate) value: String,
    /// The whitespace written before the name.
    pub(crate) lead: String,
    /// The value as written between the quotes, while `value` is unchanged.
    pub(crate) raw: Option<(char, String)>,
}

/// An element: name, attributes in source order, and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub(crate) name: String,
    pub(crate) attributes: Vec<Attribute>,
    pub(crate) children: Vec<Node>,
    /// Whitespace written after the last attribute, before `>` or `/>`.
    pub(crate) tag_tail: String,
    /// Written as `<x/>` when it has no children.
    pub(crate) self_closing: bool,
    /// 1-based source line of the start tag; 0 for elements made in code.
    pub(crate) line: usize,
}

impl Element {
    /// A new, empty element.
    pub fn new(name: &str) -> Element {
        Element {
            name: name.to_string(),
            attributes: Vec::new(),
            children: Vec::new(),
            tag_tail: String::new(),
            self_closing: true,
            line: 0,
        }
    }

    /// The qualified element name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 1-based source line of the start tag (0 when made in code).
    pub fn line(&self) -> usize {
        self.line
    }

    /// The decoded value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_str())
    }

    /// All attributes as (name, value) pairs in source order.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes.iter().map(|a| (a.name.as_str(), a.value.as_str()))
    }

    /// Sets attribute `name`, keeping its position when it exists.
    pub fn set_attr(&mut self, name: &str, value: &str) {
        match self.attributes.iter_mut().find(|a| a.name == name) {
            Some(a) if a.value == value => {}
            Some(a) => {
                a.value = value.to_string();
                a.raw = None;
            }
            None => self.attributes.push(Attribute {
                name: name.to_string(),
                value: value.to_string(),
                lead: " ".to_string(),
                raw: None,
            }),
        }
    }

    /// Removes attribute `name` and returns its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let index = self.attributes.iter().position(|a| a.name == name)?;
        Some(self.attributes.remove(index).value)
    }

    /// The child nodes in order.
    pub fn children(&self) -> &[Node] {
        &self.children
    }

    /// The child nodes, for editing.
    pub fn children_mut(&mut self) -> &mut Vec<Node> {
        &mut self.children
    }

    /// The child elements in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(Node::as_element)
    }

    /// The child elements called `name`.
    pub fn elements_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.elements().filter(move |e| e.name == name)
    }

    /// The first child element called `name`.
    pub fn first(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// The decoded text and CDATA directly inside this element, concatenated.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            match node {
                Node::Text(raw) => out.push_str(&unescape(raw).unwrap_or(raw.into())),
                Node::CData(data) => out.push_str(data),
                _ => {}
            }
        }
        out
    }
}

/// A whole XML document: what comes before the root, the root, what follows.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where the document came from, used in messages (a path or a label).
    pub(crate) origin: String,
    pub(crate) bom: bool,
    pub(crate) prolog: Vec<Node>,
    pub(crate) root: Element,
    pub(crate) epilog: Vec<Node>,
}

/// Documents are equal when their content is, wherever they came from.
impl PartialEq for Document {
    fn eq(&self, other: &Self) -> bool {
        (self.bom, &self.prolog, &self.root, &self.epilog) == (other.bom, &other.prolog, &other.root, &other.epilog)
    }
}

impl Document {
    /// Where the document came from (a path or a label), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The root element.
    pub fn root(&self) -> &Element {
        &self.root
    }

    /// The root element, for editing.
    pub fn root_mut(&mut self) -> &mut Element {
        &mut self.root
    }

    /// Declaration, comments, processing instructions and whitespace before the root.
    pub fn prolog(&self) -> &[Node] {
        &self.prolog
    }

    /// Comments, processing instructions and whitespace after the root.
    pub fn epilog(&self) -> &[Node] {
        &self.epilog
    }

    /// Writes the document to `path` atomically: a temporary file beside it is
    /// renamed over it. An existing file's permissions are kept, a new file
    /// gets mode 0644.
    pub fn write_to(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut file = tempfile::NamedTempFile::new_in(dir)
            .wrap_err_with(|| format!("creating a temporary file in {}", dir.display()))?;
        file.write_all(self.to_string().as_bytes())
            .and_then(|()| file.as_file().sync_all())
            .wrap_err_with(|| format!("writing {}", file.path().display()))?;
        let permissions = match std::fs::metadata(path) {
            Ok(meta) => Some(meta.permissions()),
            Err(_) => default_permissions(),
        };
        if let Some(permissions) = permissions {
            std::fs::set_permissions(file.path(), permissions)
                .wrap_err_with(|| format!("setting permissions of {}", file.path().display()))?;
        }
        file.persist(path)
            .map_err(|e| e.error)
            .wrap_err_with(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

// tempfile creates files private to the owner; a description is not secret.
#[cfg(unix)]
fn default_permissions() -> Option<std::fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    Some(std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn default_permissions() -> Option<std::fs::Permissions> {
    None
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bom {
            f.write_char('\u{feff}')?;
        }
        for node in &self.prolog {
            write_node(f, node)?;
        }
        write_element(f, &self.root)?;
        for node in &self.epilog {
            write_node(f, node)?;
        }
        Ok(())
    }
}

fn write_node(f: &mut fmt::Formatter<'_>, node: &Node) -> fmt::Result {
    match node {
        Node::Element(e) => write_element(f, e),
        Node::Text(raw) => f.write_str(raw),
        Node::CData(data) => write!(f, "<![CDATA[{data}]]>"),
        Node::Comment(text) => write!(f, "<!--{text}-->"),
        Node::Pi(text) | Node::Decl(text) => write!(f, "<?{text}?>"),
        Node::DocType(text) => write!(f, "<!DOCTYPE {text}>"),
    }
}

fn write_element(f: &mut fmt::Formatter<'_>, e: &Element) -> fmt::Result {
    write!(f, "<{}", e.name)?;
    for a in &e.attributes {
        let lead = if a.lead.is_empty() { " " } else { &a.lead };
        match &a.raw {
            Some((quote, raw)) => write!(f, "{lead}{}={quote}{raw}{quote}", a.name)?,
            None => write!(f, "{lead}{}=\"{}\"", a.name, escape_attr(&a.value))?,
        }
    }
    f.write_str(&e.tag_tail)?;
    if e.children.is_empty() && e.self_closing {
        return f.write_str("/>");
    }
    f.write_char('>')?;
    for child in &e.children {
        write_node(f, child)?;
    }
    write!(f, "</{}>", e.name)
}

/// Escapes character data for writing.
pub(crate) fn escape_text(value: &str) -> String {
    value.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Escapes an attribute value for writing between double quotes; whitespace
/// other than space is written as a reference so a reader keeps it.
pub(crate) fn escape_attr(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}
