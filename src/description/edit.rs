//! Editing children while keeping the indentation readable.
//!
//! Whitespace between elements is ordinary text in the model; these helpers
//! add one line of indentation before each inserted node and drop the line
//! of a removed one, so edited documents look hand-written.

use super::model::{Element, Node};
use super::schema::rank;

/// An element with the comments and processing instructions written right
/// before it; at the end of a parent, comments with no element.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// Comments, processing instructions (and stray text) before the element.
    pub lead: Vec<Node>,
    /// The element, absent for trailing comments.
    pub element: Option<Element>,
}

impl Group {
    /// The nodes of the group in order.
    pub fn into_nodes(self) -> Vec<Node> {
        let mut nodes = self.lead;
        nodes.extend(self.element.map(Node::Element));
        nodes
    }
}

/// The children of `parent` as groups, indentation left out.
pub(crate) fn groups(parent: &Element) -> Vec<Group> {
    let mut out = Vec::new();
    let mut lead = Vec::new();
    for node in parent.children() {
        match node {
            Node::Element(e) => out.push(Group {
                lead: std::mem::take(&mut lead),
                element: Some(e.clone()),
            }),
            node if node.is_blank() => {}
            node => lead.push(node.clone()),
        }
    }
    if !lead.is_empty() {
        out.push(Group { lead, element: None });
    }
    out
}

/// The indentation (line end included) of the children of `parent`, whose
/// own line starts with `parent_indent`.
pub(crate) fn child_indent(parent: &Element, parent_indent: &str) -> String {
    let children = parent.children();
    for pair in children.windows(2) {
        if let (Node::Text(t), next) = (&pair[0], &pair[1]) {
            if pair[0].is_blank() && !matches!(next, Node::Text(_)) && t.contains('\n') {
                let eol = if t.contains("\r\n") { "\r\n" } else { "\n" };
                return format!("{eol}{}", line_tail(t));
            }
        }
    }
    format!("{parent_indent}    ")
}

/// What follows the last line end of `text`: the indentation of a line.
fn line_tail(text: &str) -> &str {
    &text[text.rfind('\n').map_or(0, |i| i + 1)..]
}

/// Re-indents the whitespace-only lines inside `element`, which starts a
/// line indented by `indent`, by `unit` per level; line ends and blank lines
/// stay. Elements taken from another document then match their new home.
pub(crate) fn reindent(element: &mut Element, indent: &str, unit: &str) {
    let inner = format!("{indent}{unit}");
    let last = element.children().len().saturating_sub(1);
    for (i, child) in element.children_mut().iter_mut().enumerate() {
        match child {
            Node::Text(t) if t.contains('\n') && t.chars().all(char::is_whitespace) => {
                let head = &t[..t.len() - line_tail(t).len()];
                *t = format!("{head}{}", if i == last { indent } else { &inner });
            }
            Node::Element(e) => reindent(e, &inner, unit),
            _ => {}
        }
    }
}

/// Re-indents `nodes` for a parent indented by `parent_indent` whose
/// children are indented by `indent` (both with their line end).
fn reindent_all(nodes: &mut [Node], indent: &str, parent_indent: &str) {
    let line = line_tail(indent);
    let unit = line
        .strip_prefix(line_tail(parent_indent))
        .filter(|u| !u.is_empty())
        .unwrap_or("    ");
    for node in nodes {
        if let Node::Element(e) = node {
            reindent(e, line, unit);
        }
    }
}

/// Where to insert into a parent's children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// After the child node at this index.
    After(usize),
    /// Before the child node at this index.
    Before(usize),
    /// After the last child that is not whitespace.
    End,
}

/// Inserts `nodes`, each on its own line, into `parent` at `slot`.
pub(crate) fn insert(parent: &mut Element, slot: Slot, nodes: Vec<Node>, parent_indent: &str) {
    if nodes.is_empty() {
        return;
    }
    let indent = child_indent(parent, parent_indent);
    let mut nodes = nodes;
    reindent_all(&mut nodes, &indent, parent_indent);
    let last_content = parent.children().iter().rposition(|n| !n.is_blank());
    let slot = match (slot, last_content) {
        (Slot::End, Some(i)) => Slot::After(i),
        (slot, _) => slot,
    };
    let children = parent.children_mut();
    match slot {
        Slot::After(i) => {
            let spliced = nodes.into_iter().flat_map(|n| [Node::Text(indent.clone()), n]);
            children.splice(i + 1..i + 1, spliced);
        }
        Slot::Before(i) => {
            let spliced = nodes.into_iter().flat_map(|n| [n, Node::Text(indent.clone())]);
            children.splice(i..i, spliced);
        }
        Slot::End => {
            children.clear();
            for node in nodes {
                children.push(Node::Text(indent.clone()));
                children.push(node);
            }
            children.push(Node::Text(parent_indent.to_string()));
        }
    }
}

/// Removes the child node at `index` together with the indentation before it.
pub(crate) fn remove(parent: &mut Element, index: usize) -> Node {
    let children = parent.children_mut();
    let node = children.remove(index);
    if index > 0 && children[index - 1].is_blank() && index < children.len() {
        children.remove(index - 1);
    }
    node
}

/// Replaces the child node at `index` by `element`, with `lead` comments
/// right before it unless the same comments are already in its group.
pub(crate) fn replace(parent: &mut Element, index: usize, lead: Vec<Node>, element: Element, parent_indent: &str) {
    let mut nodes = [Node::Element(element)];
    reindent_all(&mut nodes, &child_indent(parent, parent_indent), parent_indent);
    let [element] = nodes;
    parent.children_mut()[index] = element;
    add_lead(parent, index, lead, parent_indent);
}

/// Puts `lead` comments right before child `index`, leaving out those that
/// are already in its group.
pub(crate) fn add_lead(parent: &mut Element, index: usize, lead: Vec<Node>, parent_indent: &str) {
    let start = group_start(parent, index);
    let present = &parent.children()[start..index];
    let new: Vec<Node> = lead.into_iter().filter(|n| !present.contains(n)).collect();
    insert(parent, Slot::Before(index), new, parent_indent);
}

/// The child element at `index`, for editing.
pub(crate) fn element_mut(parent: &mut Element, index: usize) -> Option<&mut Element> {
    match parent.children_mut().get_mut(index) {
        Some(Node::Element(e)) => Some(e),
        _ => None,
    }
}

/// Indices of the child elements for which `pred` holds.
pub(crate) fn find_children(parent: &Element, pred: impl Fn(&Element) -> bool) -> Vec<usize> {
    let children = parent.children().iter().enumerate();
    children
        .filter(|(_, n)| n.as_element().is_some_and(&pred))
        .map(|(i, _)| i)
        .collect()
}

/// Index of the first comment of the group that ends with child `index`.
pub(crate) fn group_start(parent: &Element, index: usize) -> usize {
    let children = parent.children();
    let mut start = index;
    for i in (0..index).rev() {
        match &children[i] {
            Node::Element(_) => break,
            node if node.is_blank() => {}
            _ => start = i,
        }
    }
    start
}

/// The slot for a new child called `name`: after the last child of the same
/// name, else after the last child that comes before it in `order`, else
/// before the first element (and its comments); names not in `order` go last.
pub(crate) fn ordered_slot(parent: &Element, name: &str, order: &[&str]) -> Slot {
    let elements: Vec<(usize, &Element)> = parent
        .children()
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.as_element().map(|e| (i, e)))
        .collect();
    if let Some((i, _)) = elements.iter().rev().find(|(_, e)| e.name() == name) {
        return Slot::After(*i);
    }
    let new_rank = rank(order, name);
    if new_rank == order.len() {
        return Slot::End;
    }
    if let Some((i, _)) = elements.iter().rev().find(|(_, e)| rank(order, e.name()) < new_rank) {
        return Slot::After(*i);
    }
    match elements.first() {
        Some((i, _)) => Slot::Before(group_start(parent, *i)),
        None => Slot::End,
    }
}

/// Inserts `group` where its element belongs by `order` (see [`ordered_slot`]).
pub(crate) fn insert_ordered(parent: &mut Element, group: Group, order: &[&str], parent_indent: &str) {
    let slot = match &group.element {
        Some(e) => ordered_slot(parent, e.name(), order),
        None => Slot::End,
    };
    insert(parent, slot, group.into_nodes(), parent_indent);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::description::model::Document;
    use crate::description::schema::IMAGE_CHILDREN;

    fn root(text: &str) -> Element {
        Document::parse_str(text, "t").unwrap().root().clone()
    }

    fn show(e: &Element) -> String {
        let doc = Document::parse_str("<x/>", "t").unwrap();
        let mut doc = doc;
        *doc.root_mut() = e.clone();
        doc.to_string()
    }

    #[test]
    fn ordered_insert_keeps_schema_order_and_indentation() {
        let base = "<image>\n  <description/>\n  <!-- repos -->\n  <repository/>\n  <packages/>\n</image>";
        let cases = [
            ("repository", "<image>\n  <description/>\n  <!-- repos -->\n  <repository/>\n  <repository/>\n  <packages/>\n</image>"),
            ("preferences", "<image>\n  <description/>\n  <preferences/>\n  <!-- repos -->\n  <repository/>\n  <packages/>\n</image>"),
            ("include", "<image>\n  <include/>\n  <description/>\n  <!-- repos -->\n  <repository/>\n  <packages/>\n</image>"),
            ("extension", "<image>\n  <description/>\n  <!-- repos -->\n  <repository/>\n  <packages/>\n  <extension/>\n</image>"),
        ];
        for (name, expected) in cases {
            let mut image = root(base);
            let group = Group {
                lead: vec![],
                element: Some(Element::new(name)),
            };
            insert_ordered(&mut image, group, IMAGE_CHILDREN, "\n");
            assert_eq!(show(&image), expected, "{name}");
        }
    }

    #[test]
    fn insert_into_empty_parent_indents_from_parent() {
        let cases = [
            ("<p/>", "<p>\n      <a/>\n  </p>"),
            ("<p>\n</p>", "<p>\n      <a/>\n  </p>"),
        ];
        for (text, expected) in cases {
            let mut p = root(text);
            insert(&mut p, Slot::End, vec![Node::Element(Element::new("a"))], "\n  ");
            assert_eq!(show(&p), expected, "{text}");
        }
    }

    #[test]
    fn reindent_adopts_the_new_indentation() {
        let cases = [
            (
                "<p>\n  <a>\n    <b/>\n  </a>\n</p>",
                "    ",
                "    ",
                "<p>\n        <a>\n            <b/>\n        </a>\n    </p>",
            ),
            ("<p>\n\n\t<a>x</a>\n</p>", "\t", "\t", "<p>\n\n\t\t<a>x</a>\n\t</p>"),
            ("<p>\r\n  <a/>\r\n</p>", "", "  ", "<p>\r\n  <a/>\r\n</p>"),
            ("<p><a> text </a></p>", "  ", "  ", "<p><a> text </a></p>"),
        ];
        for (text, indent, unit, expected) in cases {
            let mut e = root(text);
            reindent(&mut e, indent, unit);
            assert_eq!(show(&e), expected, "{text:?}");
        }
    }

    #[test]
    fn remove_drops_the_line() {
        let cases = [
            (1, "<i>\n  <a/>\n  <b/>\n</i>", "<i>\n  <b/>\n</i>"),
            (3, "<i>\n  <a/>\n  <b/>\n</i>", "<i>\n  <a/>\n</i>"),
            (1, "<i>\n  <a/>\n</i>", "<i>\n</i>"),
            (0, "<i><a/></i>", "<i></i>"),
        ];
        for (index, text, expected) in cases {
            let mut e = root(text);
            remove(&mut e, index);
            assert_eq!(show(&e), expected, "{text}");
        }
    }

    #[test]
    fn replace_adds_new_comments_only() {
        let mut e = root("<i>\n  <!-- a -->\n  <x n=\"1\"/>\n</i>");
        let lead = vec![Node::Comment(" a ".into()), Node::Comment(" b ".into())];
        let mut x = Element::new("x");
        x.set_attr("n", "2");
        replace(&mut e, 3, lead, x, "\n");
        assert_eq!(show(&e), "<i>\n  <!-- a -->\n  <!-- b -->\n  <x n=\"2\"/>\n</i>");
    }

    #[test]
    fn groups_attach_comments_to_the_next_element() {
        let e = root("<i>\n  <!-- a --><?pi x?>\n  <x/>\n  <y/>\n  <!-- end -->\n</i>");
        let shape: Vec<(usize, Option<String>)> = groups(&e)
            .into_iter()
            .map(|g| (g.lead.len(), g.element.map(|e| e.name().to_string())))
            .collect();
        assert_eq!(shape, [(2, Some("x".into())), (0, Some("y".into())), (1, None)]);
    }
}
