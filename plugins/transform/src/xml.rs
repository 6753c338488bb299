//! XML ↔ JSON, by the mapping the README documents ("XML and JSON"):
//!
//! - an element is a key; its value is its text (a string) if it has neither attributes nor
//!   child elements, `null` if it is empty, and an object otherwise;
//! - attributes are `"@name"` keys, text beside attributes or children is `"#text"`;
//! - repeated sibling elements are an array, under the first one's key;
//! - names keep their prefixes (`soap:Envelope`) and `xmlns` declarations are attributes
//!   (`@xmlns:soap`), so a round trip gives the namespaces back without resolving them;
//! - CDATA is text; comments, processing instructions and the DOCTYPE are dropped.
//!
//! Reading is quick-xml's pull parser over the body as `&str`: it expands no entity itself,
//! and this module resolves only character references and the five predefined entities, so
//! an entity declared in a DOCTYPE (a billion laughs) is refused where it is used, never
//! expanded. Elements nest at most [`MAX_DEPTH`] deep either way, and the XML written is
//! bounded by the size of the JSON it came from: hostile input fails early and cheaply.

use std::borrow::Cow;
use std::fmt;

use indexmap::map::Entry;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use crate::json::{Json, Object};

/// The deepest elements may nest, XML → JSON and JSON → XML.
pub(crate) const MAX_DEPTH: usize = 64;

/// JSON → XML writes at most this many times the JSON's size, plus [`GROWTH_SLACK`]: names
/// repeat for every item of an array, so a long name over a long array would otherwise turn
/// a small body into gigabytes.
pub(crate) const MAX_GROWTH: usize = 8;
const GROWTH_SLACK: usize = 64 * 1024;

/// What JSON → XML writes first.
const DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// Whitespace as XML counts it.
const XML_SPACE: [char; 4] = [' ', '\t', '\r', '\n'];

/// Why a body could not be converted.
#[derive(Debug)]
pub(crate) enum Error {
    /// The XML is not well-formed (or not UTF-8), or uses an entity that is not expanded.
    Malformed(String),
    /// Elements nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The JSON has no XML form (a top-level array, an array in an array, a key that is not
    /// an XML name, a character XML 1.0 cannot carry, too large a result).
    Unmappable(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(why) => write!(f, "not well-formed XML: {why}"),
            Error::TooDeep => write!(f, "elements nest deeper than {MAX_DEPTH}"),
            Error::Unmappable(why) => f.write_str(why),
        }
    }
}

/// Whether `name` is an XML element or attribute name this mapping accepts: a name of XML
/// 1.0 with at most one colon, between a prefix and a local part (a namespace QName).
pub(crate) fn is_name(name: &str) -> bool {
    let part = |p: &str| {
        let mut chars = p.chars();
        chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
    };
    match name.split_once(':') {
        None => part(name),
        Some((prefix, local)) => part(prefix) && part(local),
    }
}

/// Whether a `charset` or `encoding` label names UTF-8 (or ASCII, a subset): the only
/// encoding read or written.
pub(crate) fn is_utf8(label: &str) -> bool {
    ["utf-8", "utf8", "us-ascii", "ascii"]
        .iter()
        .any(|l| label.trim().eq_ignore_ascii_case(l))
}

/// XML → JSON: the document as an object with one key, its root element. `charset` is the
/// `Content-Type`'s, if it names one.
pub(crate) fn to_json(xml: &[u8], charset: Option<&str>) -> Result<Json, Error> {
    if let Some(charset) = charset.filter(|c| !is_utf8(c)) {
        return Err(Error::Malformed(format!(
            "charset {charset:?} is not supported, only UTF-8"
        )));
    }
    let text = std::str::from_utf8(xml).map_err(|e| Error::Malformed(format!("not UTF-8: {e}")))?;
    let mut reader = Reader::from_str(text.strip_prefix('\u{feff}').unwrap_or(text));
    let mut version = XmlVersion::Implicit1_0;
    let mut document = Document::default();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| Error::Malformed(format!("{e} (at byte {})", reader.error_position())))?;
        match event {
            Event::Decl(decl) => {
                version = decl
                    .xml_version()
                    .map_err(|e| Error::Malformed(e.to_string()))?;
                if let Some(encoding) = decl.encoding() {
                    let encoding = encoding.map_err(|e| Error::Malformed(e.to_string()))?;
                    if !is_utf8(&encoding) {
                        return Err(Error::Malformed(format!(
                            "encoding {encoding:?} is not supported, only UTF-8"
                        )));
                    }
                }
            }
            Event::Start(start) => {
                let element = document.begin(&start, version)?;
                document.open.push(element);
            }
            Event::Empty(start) => {
                let element = document.begin(&start, version)?;
                document.end(element);
            }
            Event::End(_) => {
                // quick-xml has checked the end tag against the element it closes.
                let element = document.open.pop().ok_or_else(|| {
                    Error::Malformed("an end tag without its start tag".to_owned())
                })?;
                document.end(element);
            }
            Event::Text(text) => document.text(&text.xml_content(version))?,
            Event::CData(cdata) => document.text(&cdata.xml_content(version))?,
            Event::GeneralRef(reference) => document.text(&resolve(&reference)?)?,
            Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(element) = document.open.last() {
        return Err(Error::Malformed(format!(
            "<{}> is not closed",
            element.name
        )));
    }
    let (name, value) = document
        .root
        .ok_or_else(|| Error::Malformed("no root element".to_owned()))?;
    Ok(Json::Object(Object::from([(name, value)])))
}

/// A document being read: the elements open, innermost last, and the root once it closed.
#[derive(Default)]
struct Document {
    open: Vec<Open>,
    root: Option<(String, Json)>,
}

/// An element being read.
struct Open {
    name: String,
    /// Its attributes (first, `@name`) and the children read so far.
    object: Object,
    attributes: usize,
    /// All its text and CDATA, joined.
    text: String,
    children: bool,
}

impl Document {
    /// An element's start tag: its name and attributes checked.
    fn begin(&self, start: &BytesStart<'_>, version: XmlVersion) -> Result<Open, Error> {
        if self.open.is_empty() && self.root.is_some() {
            return Err(Error::Malformed("a second root element".to_owned()));
        }
        if self.open.len() >= MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        let name = start.name().into_inner();
        if !is_name(name) {
            return Err(Error::Malformed(format!("<{name}>: not an XML name")));
        }
        let mut object = Object::new();
        let mut attributes = start.attributes();
        // quick-xml's own duplicate check compares every pair; the map below finds a
        // duplicate in constant time, so ten thousand attributes cost ten thousand steps.
        attributes.with_checks(false);
        for attribute in attributes {
            let attribute = attribute.map_err(|e| Error::Malformed(format!("<{name}>: {e}")))?;
            let key = attribute.key.into_inner();
            if !is_name(key) {
                return Err(Error::Malformed(format!(
                    "<{name}>: attribute {key:?} is not an XML name"
                )));
            }
            let value = attribute
                .normalized_value(version)
                .map_err(|e| Error::Malformed(format!("<{name} {key}>: {e}")))?;
            check_chars(&value)?;
            let previous = object.insert(format!("@{key}"), Json::String(value.into_owned()));
            if previous.is_some() {
                return Err(Error::Malformed(format!(
                    "<{name}>: attribute {key} appears twice"
                )));
            }
        }
        Ok(Open {
            name: name.to_owned(),
            attributes: object.len(),
            object,
            text: String::new(),
            children: false,
        })
    }

    /// An element's end: its value made and put in its parent (or made the root).
    fn end(&mut self, element: Open) {
        let Open {
            name,
            mut object,
            attributes,
            text,
            children,
        } = element;
        let value = if object.is_empty() {
            // Neither attributes nor children: the text itself, exactly as written.
            if text.is_empty() {
                Json::Null
            } else {
                Json::String(text)
            }
        } else {
            // Beside children, text is mostly the indentation between them.
            let text = if children {
                text.trim_matches(XML_SPACE)
            } else {
                &text
            };
            if !text.is_empty() {
                object.shift_insert(attributes, "#text".to_owned(), Json::String(text.into()));
            }
            Json::Object(object)
        };
        let Some(parent) = self.open.last_mut() else {
            self.root = Some((name, value));
            return;
        };
        parent.children = true;
        match parent.object.entry(name) {
            Entry::Vacant(slot) => {
                slot.insert(value);
            }
            // XML gives an array only for a repeated element, so an array here is one.
            Entry::Occupied(mut slot) => match slot.get_mut() {
                Json::Array(items) => items.push(value),
                single => {
                    let first = std::mem::take(single);
                    *single = Json::Array(vec![first, value]);
                }
            },
        }
    }

    /// Text, CDATA or a resolved reference: the open element's, or whitespace between the
    /// prolog, the root and what follows it.
    fn text(&mut self, text: &str) -> Result<(), Error> {
        check_chars(text)?;
        match self.open.last_mut() {
            Some(element) => element.text.push_str(text),
            None if text.trim_matches(XML_SPACE).is_empty() => {}
            None => return Err(Error::Malformed("text outside the root element".to_owned())),
        }
        Ok(())
    }
}

/// Refuses a character XML 1.0 does not allow in a document (quick-xml lets them through).
fn check_chars(text: &str) -> Result<(), Error> {
    match text.chars().find(|c| !is_xml_char(*c)) {
        Some(c) => Err(Error::Malformed(format!(
            "U+{:04X} is not an XML character",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

/// `&#x41;`, `&#65;` and the five predefined entities; any other entity is refused, never
/// looked up, so a DOCTYPE's entities cannot expand.
fn resolve<'a>(reference: &'a BytesRef<'_>) -> Result<Cow<'a, str>, Error> {
    let name: &str = reference;
    match reference.resolve_char_ref() {
        Ok(Some(c)) if is_xml_char(c) => Ok(Cow::Owned(c.to_string())),
        Ok(Some(c)) => Err(Error::Malformed(format!(
            "&{name};: U+{:04X} is not an XML character",
            u32::from(c)
        ))),
        Err(e) => Err(Error::Malformed(format!("&{name};: {e}"))),
        Ok(None) => quick_xml::escape::resolve_predefined_entity(name)
            .map(Cow::Borrowed)
            .ok_or_else(|| {
                Error::Malformed(format!(
                    "&{name};: only the five predefined entities are expanded"
                ))
            }),
    }
}

/// JSON → XML, after the declaration: an object with one key (whose value is not an array)
/// is that element; anything else but an array is put in an element called `root`.
pub(crate) fn from_json(value: &Json, root: &str, json_len: usize) -> Result<Vec<u8>, Error> {
    let limit = json_len
        .saturating_mul(MAX_GROWTH)
        .saturating_add(GROWTH_SLACK);
    let mut out = Output {
        xml: String::with_capacity(json_len.saturating_add(json_len / 2).min(limit)),
        limit,
    };
    out.push(DECLARATION)?;
    match value {
        Json::Array(_) => {
            return Err(Error::Unmappable(
                "a top-level array has no element name to repeat (json.wrap can give it one)"
                    .to_owned(),
            ));
        }
        Json::Object(object) if object.len() == 1 => match object.first() {
            Some((name, inner))
                if !name.starts_with('@')
                    && name != "#text"
                    && !matches!(inner, Json::Array(_)) =>
            {
                element(&mut out, name, inner, 1)?;
            }
            _ => element(&mut out, root, value, 1)?,
        },
        _ => element(&mut out, root, value, 1)?,
    }
    Ok(out.xml.into_bytes())
}

/// The XML being written, refusing to grow past its limit.
struct Output {
    xml: String,
    limit: usize,
}

impl Output {
    fn push(&mut self, s: &str) -> Result<(), Error> {
        if self.xml.len().saturating_add(s.len()) > self.limit {
            return Err(Error::Unmappable(format!(
                "the XML would be more than {MAX_GROWTH} times the size of the JSON"
            )));
        }
        self.xml.push_str(s);
        Ok(())
    }

    /// `text` escaped for element content, or for a `"`-quoted attribute value (whose tabs
    /// and newlines a parser would otherwise turn into spaces).
    fn escaped(&mut self, text: &str, attribute: bool) -> Result<(), Error> {
        let mut from = 0;
        for (i, c) in text.char_indices() {
            let escape = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '\r' => "&#xD;",
                '"' if attribute => "&quot;",
                '\t' if attribute => "&#x9;",
                '\n' if attribute => "&#xA;",
                c if !is_xml_char(c) => {
                    return Err(Error::Unmappable(format!(
                        "U+{:04X} cannot be written in XML 1.0",
                        u32::from(c)
                    )));
                }
                _ => continue,
            };
            self.push(&text[from..i])?;
            self.push(escape)?;
            from = i + c.len_utf8();
        }
        self.push(&text[from..])
    }
}

/// Element `name` holding `value` (repeated, for an array), `depth` deep.
fn element(out: &mut Output, name: &str, value: &Json, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep);
    }
    if !is_name(name) {
        return Err(Error::Unmappable(format!(
            "{name:?} is not an XML element name"
        )));
    }
    let object = match value {
        Json::Array(items) => {
            for item in items {
                if matches!(item, Json::Array(_)) {
                    return Err(Error::Unmappable(format!(
                        "{name:?} holds an array in an array, which XML cannot repeat"
                    )));
                }
                element(out, name, item, depth)?;
            }
            return Ok(());
        }
        Json::Object(object) => object,
        Json::Null => {
            out.push("<")?;
            out.push(name)?;
            return out.push("/>");
        }
        scalar => {
            out.push("<")?;
            out.push(name)?;
            out.push(">")?;
            out.escaped(&text(scalar).unwrap_or_default(), false)?;
            out.push("</")?;
            out.push(name)?;
            return out.push(">");
        }
    };
    out.push("<")?;
    out.push(name)?;
    for (key, value) in object {
        let Some(attribute) = key.strip_prefix('@') else {
            continue;
        };
        if !is_name(attribute) {
            return Err(Error::Unmappable(format!(
                "{key:?} in {name:?} is not an XML attribute name"
            )));
        }
        let value = text(value).ok_or_else(|| {
            Error::Unmappable(format!(
                "attribute {key:?} of {name:?} is not a plain value"
            ))
        })?;
        out.push(" ")?;
        out.push(attribute)?;
        out.push("=\"")?;
        out.escaped(&value, true)?;
        out.push("\"")?;
    }
    let mut content = object
        .iter()
        .filter(|(k, _)| !k.starts_with('@'))
        .peekable();
    if content.peek().is_none() {
        return out.push("/>");
    }
    out.push(">")?;
    for (key, value) in content {
        if key == "#text" {
            let text = text(value).ok_or_else(|| {
                Error::Unmappable(format!("\"#text\" of {name:?} is not a plain value"))
            })?;
            out.escaped(&text, false)?;
        } else {
            element(out, key, value, depth + 1)?;
        }
    }
    out.push("</")?;
    out.push(name)?;
    out.push(">")
}

/// A plain value as XML text: strings as they are, numbers and booleans as JSON writes
/// them, `null` as nothing; `None` for an array or object.
fn text(value: &Json) -> Option<Cow<'_, str>> {
    match value {
        Json::Null => Some(Cow::Borrowed("")),
        Json::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Json::Number(n) => Some(Cow::Owned(n.to_string())),
        Json::String(s) => Some(Cow::Borrowed(s)),
        Json::Array(_) | Json::Object(_) => None,
    }
}

/// XML 1.0's `Char`.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML 1.0's `NameStartChar`, without the colon (namespaces give it its own meaning).
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0's `NameChar`, without the colon.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use quick_xml::events::Event;
    use quick_xml::{Reader, XmlVersion};
    use serde_json::{Value, json};

    use super::{Error, Json, MAX_DEPTH, from_json, to_json};

    /// A SOAP 1.1 request: namespaces declared on the envelope, prefixed elements and
    /// attributes, an `xsi:nil` element, a header that must stay before the body.
    const SOAP: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
               xmlns:m="http://www.example.org/stock"
               soap:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">
  <soap:Header>
    <m:Transaction soap:mustUnderstand="1">5</m:Transaction>
  </soap:Header>
  <soap:Body>
    <m:GetStockPrice>
      <m:StockName>IBM</m:StockName>
      <m:Currency xsi:nil="true"/>
    </m:GetStockPrice>
  </soap:Body>
</soap:Envelope>
"#;

    /// An RSS 2.0 feed: three items (an array), repeated categories, CDATA holding markup,
    /// an entity, a comment, an Atom element under its prefix.
    const RSS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<?xml-stylesheet type="text/xsl" href="/feed.xsl"?>
<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <channel>
    <title>weir releases</title>
    <link>https://example.org/weir</link>
    <description>News &amp; releases of weir</description>
    <atom:link href="https://example.org/weir/feed.xml" rel="self" type="application/rss+xml"/>
    <language>en-gb</language>
    <!-- generated nightly -->
    <item>
      <title>weir 0.3</title>
      <link>https://example.org/weir/0.3</link>
      <description><![CDATA[<p>XML &amp; JSON in <code>transform</code></p>]]></description>
      <pubDate>Mon, 02 Mar 2026 09:00:00 GMT</pubDate>
      <guid isPermaLink="false">weir-0.3</guid>
      <category>release</category>
      <category>plugins</category>
      <dc:creator>The weir team</dc:creator>
    </item>
    <item>
      <title>weir 0.2</title>
      <link>https://example.org/weir/0.2</link>
      <description>Body hooks</description>
      <pubDate>Mon, 02 Feb 2026 09:00:00 GMT</pubDate>
      <guid>https://example.org/weir/0.2</guid>
    </item>
    <item>
      <title>weir 0.1 &#x2014; first</title>
      <link>https://example.org/weir/0.1</link>
      <enclosure url="https://example.org/weir-0.1.tar.gz" length="1048576" type="application/gzip"/>
    </item>
  </channel>
</rss>
"#;

    /// An Atom feed: a default namespace, `xml:lang`, repeated `link`s with attributes only,
    /// escaped markup, character references, inline XHTML in its own namespace.
    const ATOM: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">
  <title type="text">weir changelog</title>
  <subtitle type="html">&lt;b&gt;All&lt;/b&gt; the changes</subtitle>
  <updated>2026-03-02T09:00:00Z</updated>
  <id>urn:uuid:60a76c80-d399-11d9-b93C-0003939e0af6</id>
  <link rel="alternate" type="text/html" href="https://example.org/"/>
  <link rel="self" type="application/atom+xml" href="https://example.org/feed.atom"/>
  <author>
    <name>Ann</name>
    <email>ann@example.org</email>
  </author>
  <entry>
    <title>XML in transform</title>
    <link href="https://example.org/2026/03/xml"/>
    <id>urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a</id>
    <updated>2026-03-02T09:00:00Z</updated>
    <summary>Tab&#x9;and line&#10;break, "quoted" &amp; 'single'</summary>
    <content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><p>It <em>converts</em>.</p></div></content>
  </entry>
  <entry>
    <title>Body hooks</title>
    <link href="https://example.org/2026/02/body"/>
    <id>urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6b</id>
    <updated>2026-02-02T09:00:00Z</updated>
  </entry>
</feed>
"#;

    fn xml_to_json(xml: &str) -> Json {
        to_json(xml.as_bytes(), None).unwrap_or_else(|e| panic!("{e}: {xml}"))
    }

    fn value(json: &Json) -> Value {
        serde_json::to_value(json).expect("JSON")
    }

    fn json_to_xml(json: &Value) -> Result<String, Error> {
        let text = serde_json::to_string(json).expect("JSON");
        let json: Json = serde_json::from_str(&text).expect("JSON");
        from_json(&json, "root", text.len()).map(|xml| String::from_utf8(xml).expect("UTF-8"))
    }

    /// XML → JSON → XML.
    fn round_trip(xml: &str) -> String {
        let json = xml_to_json(xml);
        let len = serde_json::to_vec(&json).expect("JSON").len();
        String::from_utf8(from_json(&json, "root", len).expect("XML")).expect("UTF-8")
    }

    /// An element as a plain parser sees it (with quick-xml, not the mapping under test):
    /// name, attributes, trimmed text, children in order. Comments and PIs are not content.
    #[derive(Debug, PartialEq)]
    struct Node {
        name: String,
        attributes: BTreeMap<String, String>,
        text: String,
        children: Vec<Node>,
    }

    fn tree(xml: &str) -> Node {
        let mut reader = Reader::from_str(xml);
        let mut open: Vec<Node> = Vec::new();
        let start = |e: &quick_xml::events::BytesStart<'_>| Node {
            name: e.name().into_inner().to_owned(),
            attributes: e
                .attributes()
                .map(|a| {
                    let a = a.expect("attribute");
                    let v = a.normalized_value(XmlVersion::Implicit1_0).expect("value");
                    (a.key.into_inner().to_owned(), v.into_owned())
                })
                .collect(),
            text: String::new(),
            children: Vec::new(),
        };
        loop {
            let mut done = match reader.read_event().expect("well-formed") {
                Event::Start(e) => {
                    open.push(start(&e));
                    None
                }
                Event::Empty(e) => Some(start(&e)),
                Event::End(_) => open.pop(),
                Event::Text(t) => {
                    if let Some(node) = open.last_mut() {
                        node.text.push_str(&t.xml_content(XmlVersion::Implicit1_0));
                    }
                    None
                }
                Event::CData(c) => {
                    if let Some(node) = open.last_mut() {
                        node.text.push_str(&c.xml_content(XmlVersion::Implicit1_0));
                    }
                    None
                }
                Event::GeneralRef(r) => {
                    let text = match r.resolve_char_ref().expect("reference") {
                        Some(c) => c.to_string(),
                        None => quick_xml::escape::resolve_predefined_entity(&r)
                            .expect("predefined")
                            .to_owned(),
                    };
                    if let Some(node) = open.last_mut() {
                        node.text.push_str(&text);
                    }
                    None
                }
                Event::Eof => panic!("no root element"),
                _ => None,
            };
            if let Some(node) = done.as_mut() {
                node.text = node.text.trim().to_owned();
            }
            match (done, open.last_mut()) {
                (Some(node), Some(parent)) => parent.children.push(node),
                (Some(node), None) => return node,
                (None, _) => {}
            }
        }
    }

    #[test]
    fn a_soap_envelope_keeps_its_prefixes_namespaces_and_order() {
        let json = xml_to_json(SOAP);
        assert_eq!(
            value(&json),
            json!({"soap:Envelope": {
                "@xmlns:soap": "http://schemas.xmlsoap.org/soap/envelope/",
                "@xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
                "@xmlns:m": "http://www.example.org/stock",
                "@soap:encodingStyle": "http://schemas.xmlsoap.org/soap/encoding/",
                "soap:Header": {
                    "m:Transaction": {"@soap:mustUnderstand": "1", "#text": "5"}
                },
                "soap:Body": {"m:GetStockPrice": {
                    "m:StockName": "IBM",
                    "m:Currency": {"@xsi:nil": "true"}
                }}
            }})
        );
        // In document order, not sorted: the header before the body.
        let text = serde_json::to_string(&json).expect("JSON");
        let header = text.find("soap:Header").expect("header");
        assert!(header < text.find("soap:Body").expect("body"), "{text}");
        assert!(
            text.starts_with(r#"{"soap:Envelope":{"@xmlns:soap":"#),
            "{text}"
        );

        let back = round_trip(SOAP);
        assert!(
            back.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="#),
            "{back}"
        );
        assert_eq!(tree(&back), tree(SOAP), "{back}");
    }

    #[test]
    fn an_rss_feed_s_items_become_an_array() {
        let json = value(&xml_to_json(RSS));
        let channel = &json["rss"]["channel"];
        assert_eq!(json["rss"]["@version"], "2.0");
        assert_eq!(json["rss"]["@xmlns:atom"], "http://www.w3.org/2005/Atom");
        assert_eq!(channel["description"], "News & releases of weir");
        assert_eq!(
            channel["atom:link"],
            json!({"@href": "https://example.org/weir/feed.xml", "@rel": "self", "@type": "application/rss+xml"})
        );
        let items = channel["item"].as_array().expect("items are an array");
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[0],
            json!({
                "title": "weir 0.3",
                "link": "https://example.org/weir/0.3",
                "description": "<p>XML &amp; JSON in <code>transform</code></p>",
                "pubDate": "Mon, 02 Mar 2026 09:00:00 GMT",
                "guid": {"@isPermaLink": "false", "#text": "weir-0.3"},
                "category": ["release", "plugins"],
                "dc:creator": "The weir team"
            })
        );
        assert_eq!(items[1]["guid"], "https://example.org/weir/0.2");
        assert_eq!(items[2]["title"], "weir 0.1 \u{2014} first");
        assert_eq!(items[2]["enclosure"]["@length"], "1048576");
        // The comment and the stylesheet PI are gone.
        let text = serde_json::to_string(&json).expect("JSON");
        assert!(!text.contains("nightly") && !text.contains("xsl"), "{text}");

        let back = round_trip(RSS);
        assert_eq!(tree(&back), tree(RSS), "{back}");
        assert_eq!(back.matches("<item>").count(), 3);
        // CDATA comes back as escaped text: the same characters.
        assert!(
            back.contains("<description>&lt;p&gt;XML &amp;amp; JSON"),
            "{back}"
        );
    }

    #[test]
    fn an_atom_feed_keeps_its_default_namespace_links_and_escaped_text() {
        let json = value(&xml_to_json(ATOM));
        let feed = &json["feed"];
        assert_eq!(feed["@xmlns"], "http://www.w3.org/2005/Atom");
        assert_eq!(feed["@xml:lang"], "en");
        assert_eq!(
            feed["title"],
            json!({"@type": "text", "#text": "weir changelog"})
        );
        assert_eq!(feed["subtitle"]["#text"], "<b>All</b> the changes");
        assert_eq!(
            feed["link"],
            json!([
                {"@rel": "alternate", "@type": "text/html", "@href": "https://example.org/"},
                {"@rel": "self", "@type": "application/atom+xml", "@href": "https://example.org/feed.atom"}
            ])
        );
        assert_eq!(
            feed["author"],
            json!({"name": "Ann", "email": "ann@example.org"})
        );
        let entries = feed["entry"].as_array().expect("entries are an array");
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0]["summary"],
            "Tab\tand line\nbreak, \"quoted\" & 'single'"
        );
        assert_eq!(
            entries[0]["content"],
            json!({"@type": "xhtml", "div": {
                "@xmlns": "http://www.w3.org/1999/xhtml",
                "p": {"#text": "It .", "em": "converts"}
            }})
        );

        let back = round_trip(ATOM);
        // Mixed content loses where its text sat between the children; the rest is equal.
        let mut expected = tree(ATOM);
        let mut got = tree(&back);
        for feed in [&mut expected, &mut got] {
            let p = &mut feed.children[7].children[5].children[0].children[0];
            assert_eq!(p.name, "p");
            p.text.clear();
        }
        assert_eq!(got, expected, "{back}");
        assert!(back.contains("Tab\tand line\nbreak"), "{back}");
    }

    #[test]
    fn each_mapping_rule_gives_its_json() {
        for (xml, want) in [
            // An element with only text is that text; nested elements are objects.
            (
                "<a><b>x</b><c> spaced </c></a>",
                json!({"a": {"b": "x", "c": " spaced "}}),
            ),
            // Empty elements are null, however written.
            ("<a><b/><c></c></a>", json!({"a": {"b": null, "c": null}})),
            // Attributes are @keys, first; text beside them is #text.
            (
                r#"<price currency="EUR" vat='incl'>12.50</price>"#,
                json!({"price": {"@currency": "EUR", "@vat": "incl", "#text": "12.50"}}),
            ),
            (r#"<a b=""/>"#, json!({"a": {"@b": ""}})),
            // Text beside children: joined and trimmed; indentation alone is no text.
            (
                "<p>\n  Hello <b>world</b>!\n</p>",
                json!({"p": {"#text": "Hello !", "b": "world"}}),
            ),
            ("<a>\n  <b>1</b>\n</a>", json!({"a": {"b": "1"}})),
            // Repeated siblings: an array in the first one's place, even with others between.
            (
                "<a><b>1</b><c/><b>2</b><b>3</b></a>",
                json!({"a": {"b": ["1", "2", "3"], "c": null}}),
            ),
            // CDATA is text; comments and PIs are dropped, the DOCTYPE too.
            (
                "<!DOCTYPE a><a><!-- no --><?pi x?><![CDATA[<b>&amp;</b>]]> and &lt;</a>",
                json!({"a": "<b>&amp;</b> and <"}),
            ),
            // Character references; attribute values normalised, but not escaped whitespace.
            (
                "<a t=\"x\ty&#x9;z\">&#65;&#x42;</a>",
                json!({"a": {"@t": "x y\tz", "#text": "AB"}}),
            ),
            // Line ends normalised to \n; a UTF-8 BOM skipped.
            ("\u{feff}<a>1\r\n2\r3</a>", json!({"a": "1\n2\n3"})),
            // Non-ASCII names and text.
            ("<straße>grün</straße>", json!({"straße": "grün"})),
        ] {
            assert_eq!(value(&xml_to_json(xml)), want, "{xml}");
        }
    }

    #[test]
    fn json_becomes_xml_by_the_reverse_rules() {
        // JSON as text: the order of its keys is the order of the elements.
        for (json, want) in [
            // One key: the root element; scalars as text, null as an empty element.
            (
                r#"{"order": {"id": 7, "paid": true, "note": null, "total": 12.5, "tag": ""}}"#,
                "<order><id>7</id><paid>true</paid><note/><total>12.5</total><tag></tag></order>",
            ),
            // Attributes and text; attributes first, whatever their place in the object.
            (
                r##"{"price": {"#text": "12.50", "@currency": "EUR", "@n": 1, "@x": null}}"##,
                r#"<price currency="EUR" n="1" x="">12.50</price>"#,
            ),
            (r#"{"a": {"@b": "1"}}"#, r#"<a b="1"/>"#),
            // Text between children where the JSON puts it.
            (
                r##"{"p": {"b": "x", "#text": "y", "i": "z"}}"##,
                "<p><b>x</b>y<i>z</i></p>",
            ),
            // Arrays repeat their element.
            (
                r#"{"list": {"item": [1, {"@id": "b"}, null]}}"#,
                r#"<list><item>1</item><item id="b"/><item/></list>"#,
            ),
            (r#"{"list": {"item": []}}"#, "<list></list>"),
            // Anything but one key, or one key holding an array: put in `root`.
            (r#"{"b": 1, "a": 2}"#, "<root><b>1</b><a>2</a></root>"),
            ("{}", "<root/>"),
            (
                r#"{"item": [1, 2]}"#,
                "<root><item>1</item><item>2</item></root>",
            ),
            (r#"{"@id": "x"}"#, r#"<root id="x"/>"#),
            (r#""text""#, "<root>text</root>"),
            ("42", "<root>42</root>"),
            ("-1.5e300", "<root>-1.5e+300</root>"),
            ("null", "<root/>"),
            // Escaping: markup characters in text and attributes; CR, tab and newline kept.
            (
                r##"{"a": {"@q": "\"<&>'\t\n\r", "#text": "<b> & ]]> \"'\r\n"}}"##,
                "<a q=\"&quot;&lt;&amp;&gt;'&#x9;&#xA;&#xD;\">&lt;b&gt; &amp; ]]&gt; \"'&#xD;\n</a>",
            ),
            // Prefixed names and xmlns declarations as they are.
            (
                r#"{"s:E": {"@xmlns:s": "urn:s", "s:B": "x"}}"#,
                r#"<s:E xmlns:s="urn:s"><s:B>x</s:B></s:E>"#,
            ),
        ] {
            let value: Json = serde_json::from_str(json).expect("JSON");
            let xml =
                from_json(&value, "root", json.len()).unwrap_or_else(|e| panic!("{json}: {e}"));
            let xml = String::from_utf8(xml).expect("UTF-8");
            let body = xml
                .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
                .expect("the declaration first");
            assert_eq!(body, want, "{json}");
            // Whatever it writes reads back.
            to_json(xml.as_bytes(), None).unwrap_or_else(|e| panic!("{xml}: {e}"));
        }
        // The root's name is the caller's.
        let xml = from_json(&Json::Null, "s:Fault", 4).expect("XML");
        assert!(xml.ends_with(b"<s:Fault/>"));
    }

    #[test]
    fn a_json_round_trip_keeps_what_xml_can_say() {
        let order = json!({"order": {
            "@id": "A-1", "@xmlns": "urn:orders",
            "customer": {"name": "Ann", "email": "ann@example.org"},
            "line": [
                {"@sku": "X1", "qty": "2", "price": {"@currency": "EUR", "#text": "9.90"}},
                {"@sku": "Y2", "qty": "1", "price": {"@currency": "EUR", "#text": "4.50"}}
            ],
            "note": "leave at the door & ring"
        }});
        let xml = json_to_xml(&order).expect("XML");
        assert_eq!(value(&xml_to_json(&xml)), order, "{xml}");
        // Element order is the JSON's.
        assert!(xml.find("<customer>") < xml.find("<line "), "{xml}");
    }

    #[test]
    fn json_that_has_no_xml_form_is_refused() {
        for (json, want) in [
            (json!([1, 2]), "top-level array"),
            (json!({"a": [[1], [2]]}), "array in an array"),
            (json!({"1abc": 1}), "\"1abc\" is not an XML element name"),
            (
                json!({"a": {"b c": 1}}),
                "\"b c\" is not an XML element name",
            ),
            (json!({"a": {"": 1}}), "\"\" is not an XML element name"),
            (json!({"a": {"x:y:z": 1}}), "not an XML element name"),
            (json!({"a": {":x": 1}}), "not an XML element name"),
            (json!({"a": {"#comment": "x"}}), "not an XML element name"),
            (json!({"a": {"<b>": 1}}), "not an XML element name"),
            (json!({"a": {"@1x": "v"}}), "not an XML attribute name"),
            (json!({"a": {"@": "v"}}), "not an XML attribute name"),
            (json!({"a": {"@b": {"c": 1}}}), "not a plain value"),
            (json!({"a": {"@b": [1]}}), "not a plain value"),
            (json!({"a": {"#text": [1]}}), "not a plain value"),
            (json!({"a": "nul\u{0}"}), "U+0000 cannot be written"),
            (
                json!({"a": {"@b": "\u{1b}[31m"}}),
                "U+001B cannot be written",
            ),
            (json!({"a": "\u{fffe}"}), "U+FFFE cannot be written"),
        ] {
            let err = json_to_xml(&json).expect_err(&json.to_string()).to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn malformed_xml_is_refused() {
        for (xml, want) in [
            ("", "no root element"),
            ("   ", "no root element"),
            ("not xml", "text outside the root element"),
            ("<a>", "<a> is not closed"),
            ("<a><b></a>", "not well-formed"),
            ("<a></b>", "not well-formed"),
            ("</a>", "not well-formed"),
            ("<a/><b/>", "a second root element"),
            ("<a/>trailing", "text outside the root element"),
            ("<1a/>", "not an XML name"),
            ("<a:b:c/>", "not an XML name"),
            (r#"<a b="1" b="2"/>"#, "attribute b appears twice"),
            ("<a b/>", "not well-formed"),
            ("<a>&nbsp;</a>", "only the five predefined entities"),
            ("<a>&#0;</a>", "not well-formed"),
            ("<a>&#x1;</a>", "U+0001 is not an XML character"),
            ("<a>& b</a>", "not well-formed"),
            (
                r#"<?xml version="1.0" encoding="ISO-8859-1"?><a/>"#,
                "encoding \"ISO-8859-1\"",
            ),
            ("<a>\u{0}</a>", "U+0000 is not an XML character"),
            ("<a>\u{1b}[31m</a>", "U+001B is not an XML character"),
            ("<a b=\"\u{7}\"/>", "U+0007 is not an XML character"),
            (
                "<a><![CDATA[\u{fffe}]]></a>",
                "U+FFFE is not an XML character",
            ),
        ] {
            let err = to_json(xml.as_bytes(), None).expect_err(xml).to_string();
            assert!(err.contains(want), "{xml:?}: {err}");
        }
        let latin1 = b"<a>gr\xfcn</a>";
        let err = to_json(latin1, None).expect_err("latin-1").to_string();
        assert!(err.contains("not UTF-8"), "{err}");
        let err = to_json(b"<a/>", Some("iso-8859-1"))
            .expect_err("charset")
            .to_string();
        assert!(err.contains("charset \"iso-8859-1\""), "{err}");
        assert!(to_json(b"<a/>", Some("UTF-8")).is_ok());
    }

    #[test]
    fn entities_are_never_expanded() {
        // A billion laughs: ten levels of ten references, about 3 GB expanded.
        let mut doctype = String::from("<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
        for level in 1..=9 {
            let previous = if level == 1 {
                "lol".to_owned()
            } else {
                format!("lol{}", level - 1)
            };
            let refs = format!("&{previous};").repeat(10);
            doctype.push_str(&format!(" <!ENTITY lol{level} \"{refs}\">\n"));
        }
        doctype.push_str("]>\n");
        for body in [
            "<lolz>&lol9;</lolz>",
            r#"<lolz a="&lol9;"/>"#,
            "<lolz>&lol;</lolz>",
        ] {
            let xml = format!("{doctype}{body}");
            let err = to_json(xml.as_bytes(), None).expect_err(body).to_string();
            assert!(err.contains("not well-formed"), "{body}: {err}");
        }
        // Declared but unused, the DOCTYPE is dropped with the rest of the prolog.
        let json = xml_to_json(&format!("{doctype}<lolz>plain</lolz>"));
        assert_eq!(value(&json), json!({"lolz": "plain"}));
        // An external entity is never fetched or read.
        let xxe = r#"<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><a>&xxe;</a>"#;
        let err = to_json(xxe.as_bytes(), None).expect_err("xxe").to_string();
        assert!(err.contains("&xxe;"), "{err}");
    }

    #[test]
    fn nesting_is_bounded_both_ways() {
        let nested = |depth: usize| format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
        assert!(to_json(nested(MAX_DEPTH).as_bytes(), None).is_ok());
        assert!(matches!(
            to_json(nested(MAX_DEPTH + 1).as_bytes(), None),
            Err(Error::TooDeep)
        ));
        // A hundred thousand open elements: refused at the 65th, nothing else read.
        let hostile = "<a>".repeat(100_000);
        assert!(matches!(
            to_json(hostile.as_bytes(), None),
            Err(Error::TooDeep)
        ));

        let object = |depth: usize| {
            let mut json = Value::from(1);
            for _ in 0..depth {
                json = json!({ "a": json });
            }
            json
        };
        assert!(json_to_xml(&object(MAX_DEPTH)).is_ok());
        assert!(matches!(
            json_to_xml(&object(MAX_DEPTH + 1)),
            Err(Error::TooDeep)
        ));
    }

    #[test]
    fn huge_attribute_counts_cost_linear_time() {
        // 100,000 attributes: quick-xml's own duplicate check would compare 5·10⁹ pairs.
        let attributes: String = (0..100_000).map(|i| format!(" a{i}=\"{i}\"")).collect();
        let xml = format!("<e{attributes}/>");
        let json = xml_to_json(&xml);
        let Json::Object(root) = &json else {
            panic!("object")
        };
        let Some(Json::Object(e)) = root.get("e") else {
            panic!("element")
        };
        assert_eq!(e.len(), 100_000);
        assert_eq!(e.get("@a99999"), Some(&Json::String("99999".into())));
        // The last one repeats the first.
        let duplicate = format!("<e{attributes} a0=\"again\"/>");
        let err = to_json(duplicate.as_bytes(), None)
            .expect_err("duplicate")
            .to_string();
        assert!(err.contains("attribute a0 appears twice"), "{err}");
        // And back: 100,000 attributes written.
        let back = json_to_xml(&value(&json)).expect("XML");
        assert_eq!(back.matches('=').count(), 100_000 + 2);
    }

    #[test]
    fn the_xml_written_is_bounded_by_the_json_s_size() {
        // A long name over a long array: each item would repeat it twice.
        let name = "n".repeat(50_000);
        let json = json!({ name.clone(): vec![1; 50_000] });
        let err = json_to_xml(&json).expect_err("amplified").to_string();
        assert!(err.contains("times the size of the JSON"), "{err}");
        // Ordinary arrays are well inside the bound.
        let json = json!({"ids": {"id": (0..10_000).collect::<Vec<_>>()}});
        assert!(json_to_xml(&json).is_ok());
    }

    #[test]
    fn every_prefix_of_a_document_converts_or_fails_without_panicking() {
        for document in [SOAP, RSS, ATOM] {
            for end in (0..document.len()).filter(|i| document.is_char_boundary(*i)) {
                let _ = to_json(&document.as_bytes()[..end], None);
            }
            let json = serde_json::to_string(&xml_to_json(document)).expect("JSON");
            for end in (0..json.len()).filter(|i| json.is_char_boundary(*i)) {
                if let Ok(json) = serde_json::from_str::<Json>(&json[..end]) {
                    let _ = from_json(&json, "root", end);
                }
            }
        }
    }
}
