//! Table tests of the merge rules, on small `&str` descriptions.

use super::*;

const BASE_DESCRIPTION: &str = "<description type=\"system\"><author>Base</author></description>";
const NEW_DESCRIPTION: &str = "<description type=\"system\"><author>New</author>\
                               <contact>n@example.org</contact><specification>new</specification></description>";

fn doc(text: &str, origin: &str) -> Document {
    Document::parse_str(text, origin).unwrap_or_else(|e| panic!("{e}"))
}

/// The document without indentation, to compare structure in one line.
fn compact(doc: &Document) -> String {
    fn node(out: &mut String, n: &Node) {
        match n {
            Node::Element(e) => element(out, e),
            Node::Text(t) => out.push_str(t.trim()),
            Node::Comment(c) => out.push_str(&format!("<!--{c}-->")),
            Node::Pi(p) | Node::Decl(p) => out.push_str(&format!("<?{p}?>")),
            Node::CData(c) => out.push_str(&format!("<![CDATA[{c}]]>")),
            Node::DocType(d) => out.push_str(&format!("<!DOCTYPE {d}>")),
        }
    }
    fn element(out: &mut String, e: &Element) {
        out.push_str(&format!("<{}", e.name()));
        for (name, value) in e.attrs() {
            out.push_str(&format!(" {name}=\"{value}\""));
        }
        if e.children().iter().all(Node::is_blank) {
            out.push_str("/>");
            return;
        }
        out.push('>');
        e.children().iter().for_each(|n| node(out, n));
        out.push_str(&format!("</{}>", e.name()));
    }
    let mut out = String::new();
    doc.prolog()
        .iter()
        .chain([&Node::Element(doc.root().clone())])
        .chain(doc.epilog())
        .for_each(|n| node(&mut out, n));
    out
}

/// Merges `derived` body into `base` body; both are wrapped in `<image>`.
fn merge_bodies(base: &str, derived: &str) -> String {
    let base = doc(
        &format!("<image schemaversion=\"8.5\" name=\"base\">\n  {base}\n</image>\n"),
        "base.kiwi",
    );
    let derived = format!("<image name=\"new\" derived_from=\"oci:base\">\n  {derived}\n</image>\n");
    let merged = merge(&base, &doc(&derived, "derived.kiwi")).unwrap_or_else(|e| panic!("{e}"));
    let text = compact(&merged);
    let inner = text
        .strip_prefix("<image schemaversion=\"8.5\" name=\"new\">")
        .unwrap_or(&text);
    inner.strip_suffix("</image>").unwrap_or(inner).to_string()
}

fn check_table(cases: &[(&str, &str, &str)]) {
    for (base, derived, expected) in cases {
        assert_eq!(
            merge_bodies(base, derived),
            *expected,
            "\nbase:    {base}\nderived: {derived}"
        );
    }
}

#[test]
fn image_attributes() {
    let cases = [
        (
            r#"schemaversion="8.5" name="b" displayname="B" id="b1""#,
            r#"name="d" derived_from="oci:x""#,
            r#"<image schemaversion="8.5" name="d"/>"#,
        ),
        (
            r#"name="b" schemaversion="8.5""#,
            r#"name="d" displayname="D" id="d1" derived_from="x""#,
            r#"<image name="d" schemaversion="8.5" displayname="D" id="d1"/>"#,
        ),
        (
            r#"name="b" schemaversion="8.5""#,
            r#"name="d" schemaversion="7.4" derived_from="x""#,
            r#"<image name="d" schemaversion="7.4"/>"#,
        ),
        (
            r#"name="b" schemaversion="7.4""#,
            r#"name="d" schemaversion="8.5" derived_from="x""#,
            r#"<image name="d" schemaversion="7.4"/>"#,
        ),
        (
            r#"name="b""#,
            r#"name="d" schemaversion="8.5" derived_from="x""#,
            r#"<image name="d" schemaversion="8.5"/>"#,
        ),
        (
            r#"name="b" xmlns:xsi="urn:x""#,
            r#"name="d" xmlns:xsi="urn:y" a="1" derived_from="x""#,
            r#"<image name="d" xmlns:xsi="urn:x" a="1"/>"#,
        ),
    ];
    for (base, derived, expected) in cases {
        let base = doc(&format!("<image {base}/>"), "b");
        let merged = merge(&base, &doc(&format!("<image {derived}/>"), "d")).unwrap();
        assert_eq!(compact(&merged), expected, "{base:?} {derived}");
    }
}

#[test]
fn schema_versions() {
    let cases = [
        (Some("8.5"), Some("7.4"), Some("7.4")),
        (Some("7.4"), Some("8.5"), Some("7.4")),
        (Some("8.10"), Some("8.9"), Some("8.9")),
        (None, Some("8.5"), Some("8.5")),
        (Some("8.5"), None, Some("8.5")),
        (Some("junk"), Some("8.5"), Some("8.5")),
        (Some("8.5"), Some("junk"), Some("8.5")),
        (None, None, None),
    ];
    for (base, derived, expected) in cases {
        assert_eq!(older_schema_version(base, derived), expected, "{base:?} {derived:?}");
    }
}

#[test]
fn description() {
    check_table(&[
        (BASE_DESCRIPTION, "", BASE_DESCRIPTION),
        (BASE_DESCRIPTION, NEW_DESCRIPTION, NEW_DESCRIPTION),
        (
            "<preferences/>",
            NEW_DESCRIPTION,
            &format!("{NEW_DESCRIPTION}<preferences/>"),
        ),
    ]);
}

#[test]
fn preferences() {
    let base = "<preferences><version>1.0</version><packagemanager>zypper</packagemanager>\
                <type image=\"oem\" filesystem=\"ext4\"/><type image=\"iso\"/></preferences>\
                <preferences profiles=\"A,B\"><type image=\"tbz\"/></preferences>\
                <preferences arch=\"aarch64\"><type image=\"oem\"/></preferences>";
    check_table(&[
        // version replaced in place, locale added in schema order (before all here)
        (base, "<preferences><locale>de_DE</locale><version>2.0</version></preferences>",
         "<preferences><locale>de_DE</locale><version>2.0</version><packagemanager>zypper</packagemanager>\
          <type image=\"oem\" filesystem=\"ext4\"/><type image=\"iso\"/></preferences>\
          <preferences profiles=\"A,B\"><type image=\"tbz\"/></preferences>\
          <preferences arch=\"aarch64\"><type image=\"oem\"/></preferences>"),
        // <type> by image: oem replaced, docker added after the last type
        (base, "<preferences><type image=\"oem\" filesystem=\"xfs\"/><type image=\"docker\"/></preferences>",
         "<preferences><version>1.0</version><packagemanager>zypper</packagemanager>\
          <type image=\"oem\" filesystem=\"xfs\"/><type image=\"iso\"/><type image=\"docker\"/></preferences>\
          <preferences profiles=\"A,B\"><type image=\"tbz\"/></preferences>\
          <preferences arch=\"aarch64\"><type image=\"oem\"/></preferences>"),
        // profiles compared as a set; arch sections kept apart
        (base, "<preferences profiles=\"B, A\"><type image=\"tbz\" compressed=\"true\"/></preferences>\
                <preferences arch=\"aarch64\"><type image=\"oem\" filesystem=\"btrfs\"/></preferences>",
         "<preferences><version>1.0</version><packagemanager>zypper</packagemanager>\
          <type image=\"oem\" filesystem=\"ext4\"/><type image=\"iso\"/></preferences>\
          <preferences profiles=\"A,B\"><type image=\"tbz\" compressed=\"true\"/></preferences>\
          <preferences arch=\"aarch64\"><type image=\"oem\" filesystem=\"btrfs\"/></preferences>"),
        // no match: a new section after the last preferences
        ("<preferences><version>1</version></preferences><repository><source path=\"a\"/></repository>",
         "<preferences profiles=\"C\"><type image=\"oem\"/></preferences>",
         "<preferences><version>1</version></preferences><preferences profiles=\"C\"><type image=\"oem\"/></preferences>\
          <repository><source path=\"a\"/></repository>"),
        // repeatable children are replaced as a set
        ("<preferences><showlicense>a</showlicense><showlicense>b</showlicense><version>1</version></preferences>",
         "<preferences><showlicense>c</showlicense><showlicense>d</showlicense></preferences>",
         "<preferences><showlicense>c</showlicense><showlicense>d</showlicense><version>1</version></preferences>"),
    ]);
}

#[test]
fn profiles() {
    let base = "<profiles><profile name=\"A\" description=\"a\"/><profile name=\"B\" description=\"b\"/></profiles>";
    check_table(&[
        (
            base,
            "<profiles><profile name=\"B\" description=\"new b\"/><profile name=\"C\" description=\"c\"/></profiles>",
            "<profiles><profile name=\"A\" description=\"a\"/><profile name=\"B\" description=\"new b\"/>\
          <profile name=\"C\" description=\"c\"/></profiles>",
        ),
        (
            &format!("{base}<profiles><profile name=\"X\" description=\"x\"/></profiles>"),
            "<profiles><profile name=\"A\" description=\"new a\"/><profile name=\"D\" description=\"d\"/></profiles>",
            "<profiles><profile name=\"A\" description=\"new a\"/><profile name=\"B\" description=\"b\"/></profiles>\
          <profiles><profile name=\"X\" description=\"x\"/><profile name=\"D\" description=\"d\"/></profiles>",
        ),
        (
            "<preferences/><users/>",
            "<profiles><profile name=\"P\" description=\"p\"/></profiles>",
            "<preferences/><profiles><profile name=\"P\" description=\"p\"/></profiles><users/>",
        ),
    ]);
}

#[test]
fn users() {
    let base = "<users><user name=\"root\" password=\"x\" home=\"/root\"/></users>\
                <users profiles=\"A\"><user name=\"a\" password=\"x\" home=\"/home/a\"/></users>";
    check_table(&[
        (base, "<users><user name=\"root\" password=\"y\" home=\"/root\"/><user name=\"tux\" password=\"t\" home=\"/home/tux\"/></users>",
         "<users><user name=\"root\" password=\"y\" home=\"/root\"/><user name=\"tux\" password=\"t\" home=\"/home/tux\"/></users>\
          <users profiles=\"A\"><user name=\"a\" password=\"x\" home=\"/home/a\"/></users>"),
        (base, "<users profiles=\"B\"><user name=\"b\" password=\"x\" home=\"/home/b\"/></users>",
         "<users><user name=\"root\" password=\"x\" home=\"/root\"/></users>\
          <users profiles=\"A\"><user name=\"a\" password=\"x\" home=\"/home/a\"/></users>\
          <users profiles=\"B\"><user name=\"b\" password=\"x\" home=\"/home/b\"/></users>"),
        ("<preferences/><repository><source path=\"r\"/></repository>",
         "<users><user name=\"u\" password=\"p\"/></users>",
         "<preferences/><users><user name=\"u\" password=\"p\"/></users><repository><source path=\"r\"/></repository>"),
    ]);
}

#[test]
fn repositories() {
    let base = "<repository alias=\"oss\"><source path=\"obs://a/standard\"/></repository>\
                <repository><source path=\"https://example.org/b\"/></repository>\
                <packages type=\"image\"/>";
    check_table(&[
        // same alias replaces
        (
            base,
            "<repository alias=\"oss\" priority=\"1\"><source path=\"obs://c/standard\"/></repository>",
            "<repository alias=\"oss\" priority=\"1\"><source path=\"obs://c/standard\"/></repository>\
          <repository><source path=\"https://example.org/b\"/></repository><packages type=\"image\"/>",
        ),
        // same path without alias replaces
        (
            base,
            "<repository priority=\"2\"><source path=\"https://example.org/b\"/></repository>",
            "<repository alias=\"oss\"><source path=\"obs://a/standard\"/></repository>\
          <repository priority=\"2\"><source path=\"https://example.org/b\"/></repository><packages type=\"image\"/>",
        ),
        // same path, one alias: the same repository
        (
            base,
            "<repository alias=\"b\"><source path=\"https://example.org/b\"/></repository>",
            "<repository alias=\"oss\"><source path=\"obs://a/standard\"/></repository>\
          <repository alias=\"b\"><source path=\"https://example.org/b\"/></repository><packages type=\"image\"/>",
        ),
        // different aliases on the same path: both kept; new ones go after the last repository
        (
            base,
            "<repository alias=\"other\"><source path=\"obs://a/standard\"/></repository>",
            "<repository alias=\"oss\"><source path=\"obs://a/standard\"/></repository>\
          <repository><source path=\"https://example.org/b\"/></repository>\
          <repository alias=\"other\"><source path=\"obs://a/standard\"/></repository><packages type=\"image\"/>",
        ),
        // with several matches the one of the same profiles is replaced
        (
            "<repository alias=\"u\" profiles=\"A\"><source path=\"a\"/></repository>\
          <repository alias=\"u\" profiles=\"B\"><source path=\"b\"/></repository>",
            "<repository alias=\"u\" profiles=\"B\"><source path=\"c\"/></repository>",
            "<repository alias=\"u\" profiles=\"A\"><source path=\"a\"/></repository>\
          <repository alias=\"u\" profiles=\"B\"><source path=\"c\"/></repository>",
        ),
    ]);
}

#[test]
fn packages_and_other_sections_are_added() {
    let base = "<preferences/><repository><source path=\"r\"/></repository>\
                <packages type=\"image\"><package name=\"a\"/></packages>\
                <packages type=\"bootstrap\"><package name=\"filesystem\"/></packages>";
    check_table(&[
        (base, "<packages type=\"image\"><package name=\"b\"/></packages><packages type=\"bootstrap\"/>",
         "<preferences/><repository><source path=\"r\"/></repository>\
          <packages type=\"image\"><package name=\"a\"/></packages>\
          <packages type=\"bootstrap\"><package name=\"filesystem\"/></packages>\
          <packages type=\"image\"><package name=\"b\"/></packages><packages type=\"bootstrap\"/>"),
        ("<preferences/><packages type=\"image\"/>", "<include from=\"this://./x.xml\"/>",
         "<include from=\"this://./x.xml\"/><preferences/><packages type=\"image\"/>"),
        ("<preferences/><packages type=\"image\"/>", "<drivers><file name=\"d.ko\"/></drivers><strip type=\"delete\"><file name=\"x\"/></strip>",
         "<preferences/><drivers><file name=\"d.ko\"/></drivers><strip type=\"delete\"><file name=\"x\"/></strip><packages type=\"image\"/>"),
        ("<certificates><certificate name=\"a\"/></certificates>",
         "<certificates><certificate name=\"a\"/><certificate name=\"b\"/></certificates>",
         "<certificates><certificate name=\"a\"/><certificate name=\"b\"/></certificates>"),
        ("<extension xmlns:a=\"urn:a\"><a:x v=\"1\"/></extension>",
         "<extension xmlns:b=\"urn:b\"><b:y/></extension>",
         "<extension xmlns:a=\"urn:a\"><a:x v=\"1\"/><b:y/></extension>"),
    ]);
}

#[test]
fn comments_survive() {
    check_table(&[
        ("<!-- base --><preferences/>", "<!-- derived --><preferences><version>2</version></preferences>",
         "<!-- base --><!-- derived --><preferences><version>2</version></preferences>"),
        ("<preferences/><!-- trailing -->", "<!-- repo --><repository><source path=\"r\"/></repository><!-- end -->",
         "<preferences/><!-- repo --><repository><source path=\"r\"/></repository><!-- trailing --><!-- end -->"),
        ("<!-- p --><profiles><profile name=\"A\" description=\"a\"/></profiles>",
         "<!-- p --><profiles><!-- b --><profile name=\"B\" description=\"b\"/></profiles>",
         "<!-- p --><profiles><profile name=\"A\" description=\"a\"/><!-- b --><profile name=\"B\" description=\"b\"/></profiles>"),
    ]);
}

#[test]
fn top_level_comments_and_declaration() {
    let derived_tag = "<image name=\"d\" derived_from=\"x\"/>";
    let cases = [
        // the derived declaration when the base has none; comments after the root
        (
            "<image name=\"b\"/>\n",
            "<?xml version=\"1.0\"?>\n<!-- OBS-Profiles: @BUILD_FLAVOR@ -->\nROOT\n<!-- tail -->\n",
            "<?xml version=\"1.0\"?>\n<!-- OBS-Profiles: @BUILD_FLAVOR@ -->\n<image name=\"d\"/>\n<!-- tail -->\n",
        ),
        // each on its own line, after the declaration glued to the root
        (
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><image name=\"b\"/>",
            "<!-- OBS-ExclusiveArch: x86_64 --><?kiwi x?>ROOT",
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!-- OBS-ExclusiveArch: x86_64 -->\n<?kiwi x?>\n<image name=\"d\"/>",
        ),
        // the same comment once
        ("<!-- same -->\n<image name=\"b\"/>", "<!-- same -->\nROOT", "<!-- same -->\n<image name=\"d\"/>"),
        // an OBS directive of the derived replaces the base's
        (
            "<!-- OBS-Profiles: A B -->\n<!-- note -->\n<!-- OBS-ExclusiveArch: x86_64 -->\n<image name=\"b\"/>",
            "<!--OBS-Profiles: @BUILD_FLAVOR@-->\nROOT",
            "<!-- note -->\n<!-- OBS-ExclusiveArch: x86_64 -->\n<!--OBS-Profiles: @BUILD_FLAVOR@-->\n<image name=\"d\"/>",
        ),
    ];
    for (base, derived, expected) in cases {
        let derived = derived.replace("ROOT", derived_tag);
        let merged = merge(&doc(base, "b"), &doc(&derived, "d")).unwrap();
        assert_eq!(merged.to_string(), expected, "{derived}");
    }
}

#[test]
fn merged_layout_reads_like_hand_written() {
    let base = r#"<image schemaversion="8.5" name="b">
    <preferences>
        <version>1</version>
    </preferences>
    <packages type="image">
        <package name="a"/>
    </packages>
</image>
"#;
    // two-space indentation, adopted to the base's four on the way in
    let derived = r#"<image name="d" derived_from="x">
  <preferences>
    <locale>en_US</locale>
  </preferences>
  <!-- extra tools -->
  <packages type="image">
    <package name="b"/>
  </packages>
</image>
"#;
    let expected = r#"<image schemaversion="8.5" name="d">
    <preferences>
        <locale>en_US</locale>
        <version>1</version>
    </preferences>
    <packages type="image">
        <package name="a"/>
    </packages>
    <!-- extra tools -->
    <packages type="image">
        <package name="b"/>
    </packages>
</image>
"#;
    let merged = merge(&doc(base, "b"), &doc(derived, "d")).unwrap();
    assert_eq!(merged.to_string(), expected);
}

#[test]
fn merge_errors_name_the_file() {
    let base = doc("<image name=\"b\"/>", "base.kiwi");
    let derived = doc("<image name=\"d\">\n<bogus/></image>", "derived.kiwi");
    let error = merge(&base, &derived).unwrap_err().to_string();
    assert!(error.contains("derived.kiwi:1: <image> needs derived_from"), "{error}");
    assert!(
        error.contains("derived.kiwi:2: <bogus> is not a KIWI element"),
        "{error}"
    );
    let error = merge(
        &doc("<config/>", "base.xml"),
        &doc("<image name=\"d\" derived_from=\"x\"/>", "d"),
    )
    .unwrap_err();
    assert_eq!(error.to_string(), "base.xml: the root element is <config>, not <image>");
}

#[test]
fn bootstrap_packages_are_removed() {
    let cases = [
        ("<image/>", 0, "<image/>"),
        ("<image>\n  <packages type=\"bootstrap\"/>\n</image>", 1, "<image>\n</image>"),
        ("<image>\n  <packages type=\"image\"/>\n  <packages type=\"bootstrap\">\n    <package name=\"f\"/>\n  </packages>\n  <packages type=\"bootstrap\" profiles=\"A\"/>\n</image>",
         2, "<image>\n  <packages type=\"image\"/>\n</image>"),
        ("<image><preferences><packages type=\"bootstrap\"/></preferences></image>", 0,
         "<image><preferences><packages type=\"bootstrap\"/></preferences></image>"),
    ];
    for (text, count, expected) in cases {
        let mut d = doc(text, "t");
        assert_eq!(remove_bootstrap_packages(&mut d), count, "{text}");
        assert_eq!(d.to_string(), expected);
    }
}

#[test]
fn section_keys_treat_lists_as_sets() {
    let key = |text: &str| section_key(doc(text, "t").root());
    assert_eq!(
        key("<p profiles=\"a,b\" arch=\"x86_64\"/>"),
        key("<p arch=\"x86_64\" profiles=\" b , a\"/>")
    );
    assert_ne!(key("<p profiles=\"a\"/>"), key("<p/>"));
    assert_ne!(key("<p profiles=\"a\"/>"), key("<p profiles=\"a\" arch=\"aarch64\"/>"));
}
