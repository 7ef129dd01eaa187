//! Merging a derived description into the one stored in an image (DESIGN §5).

use std::collections::{BTreeMap, BTreeSet};

use color_eyre::eyre::bail;
use color_eyre::Result;

use super::check::check_derived;
use super::edit::{
    add_lead, child_indent, element_mut, find_children, groups, insert, insert_ordered, remove, replace, Group, Slot,
};
use super::model::{Document, Element, Node};
use super::schema::{IMAGE_CHILDREN, PREFERENCES_CHILDREN};

/// The root element starts a line of its own at column 0.
const ROOT_INDENT: &str = "\n";

/// Merges `derived` into `base` and returns the description to build:
/// - `<image>`: `name`, `displayname` and `id` from the derived (dropped when
///   it has none), `derived_from` dropped, other attributes of both kept;
///   `schemaversion` is the older of the two, so KIWI's XSLT upgrade still
///   converts the older side (newer content passes the conversions as is);
/// - `<description>`: the derived one replaces the base one of the same type;
/// - `<preferences>`: sections with the same `profiles`/`arch` are merged,
///   `<type>` by `image`, other children by element name; others are added;
/// - `<profiles>`: `<profile>` by name, replaced or added;
/// - `<users>`: sections with the same attributes merged, `<user>` by name;
/// - `<repository>`: the same `alias`, or the same `<source path>` unless
///   both have (different) aliases, replaces; preferring one with the same
///   `profiles`/`arch`; otherwise added;
/// - `<certificates>`, `<extension>` (one allowed): children by name;
/// - everything else (`<packages>`, `<include>`, ...) is added, after the
///   last section of its kind or where KIWI's schema order puts it;
/// - comments and processing instructions of both survive: those before a
///   derived element move with it, top-level ones go before or after
///   `<image>`, and a derived OBS directive (`<!-- OBS-Profiles: ... -->`)
///   replaces the base's of the same key;
/// - `<packages type="bootstrap">` of both stays, like every other
///   `<packages>`: the merge is a complete description that kiwi-ng can
///   also build from scratch. A build on an existing root drops it from the
///   copy it hands kiwi-ng ([`remove_bootstrap_packages`]).
///
/// Inserted elements take the base's indentation. `derived` is checked
/// first with [`check_derived`].
pub fn merge(base: &Document, derived: &Document) -> Result<Document> {
    check_derived(derived)?;
    if base.root.name() != "image" {
        bail!(
            "{}: the root element is <{}>, not <image>",
            base.origin,
            base.root.name()
        );
    }
    let mut out = base.clone();
    out.origin = format!("{} merged into {}", derived.origin, base.origin);
    merge_image_attributes(&mut out.root, &derived.root);
    merge_prolog(&mut out.prolog, &derived.prolog);
    merge_epilog(&mut out.epilog, &derived.epilog);
    for group in groups(&derived.root) {
        merge_section(&mut out.root, group);
    }
    Ok(out)
}

/// Removes every `<packages type="bootstrap">` (even an empty one) from the
/// top level of `doc` and returns how many there were.
pub fn remove_bootstrap_packages(doc: &mut Document) -> usize {
    let is_bootstrap = |e: &Element| e.name() == "packages" && e.attr("type") == Some("bootstrap");
    let found = find_children(&doc.root, is_bootstrap);
    for index in found.iter().rev() {
        remove(&mut doc.root, *index);
    }
    found.len()
}

/// `name`, `displayname` and `id` come from the derived image (and are
/// dropped when it has none: they describe the new image, not the base);
/// `derived_from` is dropped; other base attributes stay, other derived ones
/// are added. `schemaversion` is the older of the two (see
/// [`older_schema_version`]).
fn merge_image_attributes(image: &mut Element, derived: &Element) {
    let version = older_schema_version(image.attr("schemaversion"), derived.attr("schemaversion"));
    if let Some(version) = version.map(str::to_string) {
        image.set_attr("schemaversion", &version);
    }
    image.remove_attr("derived_from");
    for name in ["name", "displayname", "id"] {
        match derived.attr(name) {
            Some(value) => image.set_attr(name, value),
            None => drop(image.remove_attr(name)),
        }
    }
    let handled = ["derived_from", "name", "displayname", "id", "schemaversion"];
    for (name, value) in derived.attrs() {
        if !handled.contains(&name) && image.attr(name).is_none() {
            image.set_attr(name, value);
        }
    }
}

/// The older of two schema versions. KIWI upgrades a description by running
/// XSLT conversions from its `schemaversion` on; the conversions rewrite only
/// constructs that later versions dropped, so newer content passes through
/// them unchanged while older content gets converted. Claiming the newer
/// version would leave the older side's constructs unconverted and invalid.
fn older_schema_version<'a>(base: Option<&'a str>, derived: Option<&'a str>) -> Option<&'a str> {
    fn parse(v: &str) -> Option<(u32, u32)> {
        let (major, minor) = v.trim().split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    }
    match (base, derived) {
        (Some(b), Some(d)) => match (parse(b), parse(d)) {
            (Some(vb), Some(vd)) if vd < vb => Some(d),
            (None, Some(_)) => Some(d),
            _ => Some(b),
        },
        (b, d) => b.or(d),
    }
}

/// Adds the derived document's declaration (when the base has none),
/// comments and processing instructions before the root. An OBS directive
/// of the derived (`<!-- OBS-Profiles: ... -->`) replaces the base's with
/// the same key: OBS reads only the first.
fn merge_prolog(out: &mut Vec<Node>, derived: &[Node]) {
    if !out.iter().any(|n| matches!(n, Node::Decl(_))) {
        if let Some(decl) = derived.iter().find(|n| matches!(n, Node::Decl(_))) {
            out.splice(0..0, [decl.clone(), Node::text("\n")]);
        }
    }
    let derived_keys: BTreeSet<&str> = derived.iter().filter_map(obs_key).collect();
    for index in (0..out.len()).rev() {
        if obs_key(&out[index]).is_some_and(|k| derived_keys.contains(k)) {
            out.remove(index);
            if index > 0 && out[index - 1].is_blank() {
                out.remove(index - 1);
            } else if index == 0 && out.first().is_some_and(Node::is_blank) {
                out.remove(0);
            }
        }
    }
    let newline_first = out.iter().any(|n| !n.is_blank());
    append_misc(out, derived, newline_first);
}

/// Adds the derived document's comments and processing instructions after
/// the root.
fn merge_epilog(out: &mut Vec<Node>, derived: &[Node]) {
    append_misc(out, derived, true);
}

/// Appends, each on its own line and before the trailing whitespace, the
/// comments and processing instructions of `derived` that `out` lacks.
fn append_misc(out: &mut Vec<Node>, derived: &[Node], newline_first: bool) {
    let new: Vec<Node> = derived
        .iter()
        .filter(|n| matches!(n, Node::Comment(_) | Node::Pi(_)) && !out.contains(n))
        .cloned()
        .collect();
    if new.is_empty() {
        return;
    }
    let content_end = out.iter().rposition(|n| !n.is_blank()).map_or(0, |i| i + 1);
    out.truncate(content_end);
    for (i, node) in new.into_iter().enumerate() {
        if i > 0 || newline_first {
            out.push(Node::text("\n"));
        }
        out.push(node);
    }
    out.push(Node::text("\n"));
}

/// The key of an OBS directive comment: `OBS-Profiles` for
/// `<!-- OBS-Profiles: @BUILD_FLAVOR@ -->`.
fn obs_key(node: &Node) -> Option<&str> {
    let Node::Comment(text) = node else {
        return None;
    };
    let (key, _) = text.trim().split_once(':')?;
    (key.starts_with("OBS-") && !key.contains(char::is_whitespace)).then_some(key)
}

fn merge_section(image: &mut Element, group: Group) {
    let Some(element) = &group.element else {
        insert(image, Slot::End, group.lead, ROOT_INDENT);
        return;
    };
    match element.name() {
        "description" => merge_description(image, group),
        "preferences" => merge_preferences(image, group),
        "profiles" => merge_profiles(image, group),
        "users" => merge_users(image, group),
        "repository" => merge_repository(image, group),
        "certificates" => merge_into(image, group, same_name, by_name, &[]),
        "extension" => merge_into(image, group, same_name, |e| Some(e.name().to_string()), &[]),
        _ => insert_ordered(image, group, IMAGE_CHILDREN, ROOT_INDENT),
    }
}

/// Replaces the child at `index` or, without one, adds `group` in schema order.
fn replace_or_add(image: &mut Element, index: Option<usize>, group: Group) {
    match (index, group) {
        (
            Some(index),
            Group {
                lead,
                element: Some(element),
            },
        ) => replace(image, index, lead, element, ROOT_INDENT),
        (_, group) => insert_ordered(image, group, IMAGE_CHILDREN, ROOT_INDENT),
    }
}

fn merge_description(image: &mut Element, group: Group) {
    let kind = group.element.as_ref().and_then(|e| e.attr("type")).map(str::to_string);
    let same = find_children(image, |e| {
        e.name() == "description" && e.attr("type") == kind.as_deref()
    });
    replace_or_add(image, same.first().copied(), group);
}

fn merge_preferences(image: &mut Element, group: Group) {
    merge_into(image, group, same_section, preferences_child_key, PREFERENCES_CHILDREN);
}

fn merge_users(image: &mut Element, group: Group) {
    merge_into(image, group, same_section, by_name, &["user"]);
}

/// Merges a section child by child into the first base section that
/// `matches` it, or adds it in schema order.
fn merge_into(image: &mut Element, group: Group, matches: SameFn, child_key: KeyFn, order: &[&str]) {
    let Some(incoming) = &group.element else {
        return;
    };
    let found = find_children(image, |e| matches(e, incoming)).first().copied();
    let Some(index) = found else {
        return insert_ordered(image, group, IMAGE_CHILDREN, ROOT_INDENT);
    };
    let indent = child_indent(image, ROOT_INDENT);
    if let Some(target) = element_mut(image, index) {
        merge_children(target, incoming, child_key, order, &indent);
    }
    add_lead(image, index, group.lead, ROOT_INDENT);
}

/// Sections match when they have the same name and attributes (see [`section_key`]).
fn same_section(a: &Element, b: &Element) -> bool {
    a.name() == b.name() && section_key(a) == section_key(b)
}

/// Sections KIWI allows once (`<certificates>`, `<extension>`) match by name.
fn same_name(a: &Element, b: &Element) -> bool {
    a.name() == b.name()
}

fn by_name(e: &Element) -> Option<String> {
    e.attr("name").map(str::to_string)
}

/// `<profile>`s replace the base profile of the same name wherever it is;
/// new ones join the last base `<profiles>` section.
fn merge_profiles(image: &mut Element, group: Group) {
    let sections = find_children(image, |e| e.name() == "profiles");
    let (Some(&last), Some(incoming)) = (sections.last(), group.element.as_ref()) else {
        insert_ordered(image, group, IMAGE_CHILDREN, ROOT_INDENT);
        return;
    };
    let indent = child_indent(image, ROOT_INDENT);
    for profile in groups(incoming) {
        let name = profile
            .element
            .as_ref()
            .and_then(|p| p.attr("name"))
            .map(str::to_string);
        let has_name = |s: &Element| s.elements_named("profile").any(|p| p.attr("name") == name.as_deref());
        let target = sections
            .iter()
            .copied()
            .find(|i| image.children()[*i].as_element().is_some_and(has_name));
        if let Some(section) = element_mut(image, target.unwrap_or(last)) {
            put_child(section, profile, &by_name, &["profile"], &indent, true);
        }
    }
    add_lead(image, last, group.lead, ROOT_INDENT);
}

fn merge_repository(image: &mut Element, group: Group) {
    let Some(incoming) = group.element.as_ref() else {
        return;
    };
    let same = find_children(image, |e| e.name() == "repository" && same_repository(e, incoming));
    let key = section_key(incoming);
    let in_same_section = same
        .iter()
        .copied()
        .find(|i| image.children()[*i].as_element().is_some_and(|e| section_key(e) == key));
    replace_or_add(image, in_same_section.or(same.first().copied()), group);
}

/// Two repositories are the same when they have the same `alias`, or the
/// same `<source path>` unless both have (different) aliases. With several
/// matches, one with the same `profiles`/`arch` is replaced first.
fn same_repository(a: &Element, b: &Element) -> bool {
    let path = |e: &Element| e.first("source").and_then(|s| s.attr("path")).map(str::to_string);
    match (a.attr("alias"), b.attr("alias")) {
        (Some(x), Some(y)) => x == y,
        _ => path(a).is_some() && path(a) == path(b),
    }
}

/// How children are matched inside a merged section: equal keys match,
/// `None` never matches.
type KeyFn = fn(&Element) -> Option<String>;

/// Whether a base section (first) is the one a derived section (second) merges into.
type SameFn = fn(&Element, &Element) -> bool;

/// `<type>` by `image`; every other preference by element name.
fn preferences_child_key(e: &Element) -> Option<String> {
    match e.name() {
        "type" => e.attr("image").map(|image| format!("type image={image}")),
        name => Some(name.to_string()),
    }
}

/// The attributes that identify a section; `profiles` and `arch` are
/// comma-separated sets, so `profiles="a,b"` and `profiles="b, a"` match.
pub(crate) fn section_key(e: &Element) -> BTreeMap<String, BTreeSet<String>> {
    let values = |name: &str, value: &str| -> BTreeSet<String> {
        if matches!(name, "profiles" | "arch") {
            value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect()
        } else {
            BTreeSet::from([value.to_string()])
        }
    };
    e.attrs()
        .map(|(name, value)| (name.to_string(), values(name, value)))
        .collect()
}

/// Merges the children of `incoming` into `target`: the first incoming child
/// with a key replaces the target's children with that key (all of them, so
/// repeatable elements such as `<showlicense>` are replaced as a set); the
/// rest are added after their kind or in `order`.
fn merge_children(target: &mut Element, incoming: &Element, key: KeyFn, order: &[&str], indent: &str) {
    let mut seen = BTreeSet::new();
    for group in groups(incoming) {
        let first_time = group.element.as_ref().and_then(key).is_some_and(|k| seen.insert(k));
        put_child(target, group, &key, order, indent, first_time);
    }
}

/// Puts one child group into `target`, replacing the children with the same
/// key when `replace_matches`, else adding it.
fn put_child(
    target: &mut Element,
    group: Group,
    key: &dyn Fn(&Element) -> Option<String>,
    order: &[&str],
    indent: &str,
    replace_matches: bool,
) {
    let Some(element) = group.element else {
        insert(target, Slot::End, group.lead, indent);
        return;
    };
    let wanted = key(&element);
    let matches = match &wanted {
        Some(_) if replace_matches => find_children(target, |e| e.name() == element.name() && key(e) == wanted),
        _ => Vec::new(),
    };
    match matches.split_first() {
        Some((&first, rest)) => {
            for index in rest.iter().rev() {
                remove(target, *index);
            }
            replace(target, first, group.lead, element, indent);
        }
        None => {
            let group = Group {
                lead: group.lead,
                element: Some(element),
            };
            insert_ordered(target, group, order, indent)
        }
    }
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
