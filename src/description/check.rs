//! Checking a derived description before anything is fetched.

use color_eyre::eyre::bail;
use color_eyre::Result;

use super::model::{Document, Element};
use super::schema::{IMAGE_CHILDREN, KNOWN_ELEMENTS, REQUIRED_ATTRIBUTES, REQUIRED_CHILDREN};

/// Checks that `doc` is a derived description: the root is `<image>` with
/// `name` and `derived_from`, every element is one KIWI knows and sits where
/// KIWI allows it at the top, and required attributes and children are
/// present (a `<repository>` has a `<source path>`, a `<description>` its
/// `<author>`, `<contact>` and `<specification>`). All problems are reported
/// at once, one a line, each as `FILE:LINE: problem`.
pub fn check_derived(doc: &Document) -> Result<()> {
    let problems = problems(doc.root());
    if problems.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = problems
        .into_iter()
        .map(|(line, problem)| format!("{}:{line}: {problem}", doc.origin()))
        .collect();
    bail!("{}", lines.join("\n"))
}

type Problem = (usize, String);

fn problems(root: &Element) -> Vec<Problem> {
    let mut out = Vec::new();
    if root.name() != "image" {
        out.push((
            root.line(),
            format!("the root element is <{}>, not <image>", root.name()),
        ));
        return out;
    }
    match root.attr("derived_from").map(str::trim) {
        None => out.push((root.line(), "<image> needs derived_from (the image to build on)".into())),
        Some("") => out.push((root.line(), "<image> has an empty derived_from".into())),
        Some(_) => {}
    }
    out.extend(missing_attributes(root, &["name"]));
    for child in root.elements() {
        if KNOWN_ELEMENTS.contains(&child.name()) && !IMAGE_CHILDREN.contains(&child.name()) {
            out.push((child.line(), format!("<{}> is not allowed in <image>", child.name())));
        } else {
            check_element(child, &mut out);
        }
    }
    out
}

fn check_element(element: &Element, out: &mut Vec<Problem>) {
    if !KNOWN_ELEMENTS.contains(&element.name()) {
        out.push((element.line(), format!("<{}> is not a KIWI element", element.name())));
        return;
    }
    if let Some((_, required)) = REQUIRED_ATTRIBUTES.iter().find(|(name, _)| *name == element.name()) {
        out.extend(missing_attributes(element, required));
    }
    if let Some((_, required)) = REQUIRED_CHILDREN.iter().find(|(name, _)| *name == element.name()) {
        for child in required.iter().filter(|c| element.first(c).is_none()) {
            let what = if *child == "source" {
                "<source path=\"...\"/>".to_string()
            } else {
                format!("<{child}>")
            };
            out.push((element.line(), format!("<{}> needs {what}", element.name())));
        }
    }
    // extension content follows the schemas of its own namespaces
    if element.name() != "extension" {
        for child in element.elements() {
            check_element(child, out);
        }
    }
}

fn missing_attributes(element: &Element, required: &[&str]) -> Vec<Problem> {
    let missing = required
        .iter()
        .filter(|a| element.attr(a).is_none_or(|v| v.trim().is_empty()));
    missing
        .map(|attribute| {
            let what = match *attribute {
                "name" => "a name".to_string(),
                other => format!("the {other} attribute"),
            };
            (element.line(), format!("<{}> needs {what}", element.name()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> Result<()> {
        let text = format!("<image name=\"d\" derived_from=\"oci:base\">\n{body}\n</image>");
        check_derived(&Document::parse_str(&text, "derived.kiwi").unwrap())
    }

    #[test]
    fn valid_derived_descriptions_pass() {
        let cases = [
            "",
            "<packages type=\"image\"><package name=\"vim\"/></packages>",
            "<users><user name=\"tux\" password=\"x\" home=\"/home/tux\"/></users>",
            "<repository alias=\"extra\"><source path=\"https://example.org/repo\"/></repository>",
            "<preferences><version>2.0</version><type image=\"oem\"><oemconfig/></type></preferences>",
            "<extension xmlns:my=\"urn:example\"><my:anything><my:thing/></my:anything></extension>",
            "<!-- OBS-Profiles: @BUILD_FLAVOR@ --><include from=\"this://./more.xml\"/>",
        ];
        for body in cases {
            check(body).unwrap_or_else(|e| panic!("{body}: {e}"));
        }
    }

    #[test]
    fn problems_name_file_and_line() {
        let cases = [
            (
                "<users>\n<user password=\"x\"/></users>",
                "derived.kiwi:3: <user> needs a name",
            ),
            (
                "<users><user name=\"u\"/></users>",
                "derived.kiwi:2: <user> needs the password attribute",
            ),
            (
                "<repository alias=\"x\"/>",
                "derived.kiwi:2: <repository> needs <source path=\"...\"/>",
            ),
            (
                "<description type=\"system\"><author>a</author><specification>s</specification></description>",
                "derived.kiwi:2: <description> needs <contact>",
            ),
            ("<users/>", "derived.kiwi:2: <users> needs <user>"),
            (
                "<repository><source/></repository>",
                "derived.kiwi:2: <source> needs the path attribute",
            ),
            (
                "<packages><package name=\"a\"/></packages>",
                "derived.kiwi:2: <packages> needs the type attribute",
            ),
            (
                "<packges type=\"image\"/>",
                "derived.kiwi:2: <packges> is not a KIWI element",
            ),
            (
                "<package name=\"vim\"/>",
                "derived.kiwi:2: <package> is not allowed in <image>",
            ),
            (
                "<preferences><typo/></preferences>",
                "derived.kiwi:2: <typo> is not a KIWI element",
            ),
            (
                "<profiles><profile name=\"p\"/></profiles>",
                "derived.kiwi:2: <profile> needs the description attribute",
            ),
        ];
        for (body, expected) in cases {
            let error = check(body).expect_err(body).to_string();
            assert_eq!(error, expected, "{body}");
        }
    }

    #[test]
    fn the_root_must_be_a_derived_image() {
        let cases = [
            (
                "<image name=\"d\"/>",
                "d.kiwi:1: <image> needs derived_from (the image to build on)",
            ),
            (
                "<image name=\"d\" derived_from=\" \"/>",
                "d.kiwi:1: <image> has an empty derived_from",
            ),
            ("<image derived_from=\"oci:b\"/>", "d.kiwi:1: <image> needs a name"),
            ("\n<config/>", "d.kiwi:2: the root element is <config>, not <image>"),
        ];
        for (text, expected) in cases {
            let doc = Document::parse_str(text, "d.kiwi").unwrap();
            assert_eq!(check_derived(&doc).unwrap_err().to_string(), expected, "{text}");
        }
    }

    #[test]
    fn all_problems_are_reported() {
        let error = check("<users><user/></users>\n<bogus/>").unwrap_err().to_string();
        let expected = "derived.kiwi:2: <user> needs a name\nderived.kiwi:2: <user> needs the password attribute\n\
                        derived.kiwi:3: <bogus> is not a KIWI element";
        assert_eq!(error, expected);
    }
}
