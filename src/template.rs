//! kiln's templates: the small part of Handlebars that overlays and extra manifests use.
//!
//! An overlay string value ([`Dialect::Value`]) takes variables only: `{{overlay}}`,
//! `{{ buildkit.version }}`, `{{{namespace}}}`. An `extra/*.yaml.hbs` manifest
//! ([`Dialect::Manifest`]) may also use comments and the blocks `if`, `unless`, `each` and
//! `with` (with `{{else}}`, `this`, `../`, `@index`, `@key`, `@first`, `@last`, `@root`).
//! Partials, inline partials, decorators, raw blocks, helpers and subexpressions are
//! refused with a message naming the construct. Nothing is ever HTML-escaped (this is YAML).
//! `\{{` writes a literal `{{`; `~` trims whitespace as in Handlebars, and a block tag alone
//! on its line takes the line with it.
//!
//! Why not the Handlebars crate: see docs/render.md. In short, no input can reach recursion
//! here: the parser keeps its own stack and stops at [`MAX_NESTING`] open blocks before
//! reading further; rendering recurses once per open block, so at most [`MAX_NESTING`] deep;
//! every render draws on a [`Budget`] of output bytes and steps. Time and memory are linear in
//! the template and the output. Pure.

use std::fmt;

use serde_json::Value;

use crate::echo;

/// The deepest nesting of blocks (`{{#if}}` inside `{{#each}}` …).
pub const MAX_NESTING: usize = 16;
/// The most bytes the templates of one overlay (its values and extra manifests) may write.
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;
/// The most steps (text pieces, variables, block entries) the templates of one overlay may take.
pub const MAX_STEPS: usize = 10_000_000;

/// Which constructs a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// An overlay string value: variables only.
    Value,
    /// An `extra/*.yaml.hbs` manifest: variables, comments and the blocks if, unless, each, with.
    Manifest,
}

/// What is left to spend on rendering; shared by every template of one overlay so that many
/// small templates cannot add up to an unbounded output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    output_left: usize,
    steps_left: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            output_left: MAX_OUTPUT_BYTES,
            steps_left: MAX_STEPS,
        }
    }
}

/// A template that cannot be rendered, with the place in the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// 1-based line in the template text.
    pub line: usize,
    /// 1-based column (in characters) in the template text.
    pub column: usize,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A variable that the context does not have, as written (`buildkit.verison`).
    UnknownVariable(String),
    /// Anything else, as one line that names the construct.
    Other(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownVariable(name) => write!(f, "unknown variable `{name}`"),
            Problem::Other(message) => f.write_str(message),
        }
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (line {} column {})", self.problem, self.line, self.column)
    }
}

impl std::error::Error for TemplateError {}

/// True when `text` has anything for [`render`] to do (otherwise it is its own output).
pub fn is_template(text: &str) -> bool {
    text.contains("{{")
}

/// Render `text` against `context` (a JSON object of string values and groups of them).
pub fn render(
    text: &str,
    context: &Value,
    dialect: Dialect,
    budget: &mut Budget,
) -> Result<String, TemplateError> {
    let at = |offset: usize, problem: Problem| {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        // A message may quote a tag; a template may hold a key (a Secret in an extra manifest).
        let problem = match problem {
            Problem::Other(message) => Problem::Other(echo::tidy(&message, Some(text))),
            unknown => unknown,
        };
        TemplateError {
            line,
            column,
            problem,
        }
    };
    let nodes = parse(text, dialect).map_err(|(offset, problem)| at(offset, problem))?;
    let mut out = String::new();
    let mut scopes = vec![Scope {
        value: context,
        data: None,
    }];
    render_nodes(&nodes, &mut scopes, &mut out, budget).map_err(|(offset, problem)| at(offset, problem))?;
    Ok(out)
}

// ---------------------------------------------------------------- parsing

/// A place in the template and what is wrong there.
type Failure = (usize, Problem);

fn fail<T>(offset: usize, message: impl Into<String>) -> Result<T, Failure> {
    Err((offset, Problem::Other(message.into())))
}

/// The blocks kiln defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    If,
    Unless,
    Each,
    With,
}

impl BlockKind {
    fn name(self) -> &'static str {
        match self {
            BlockKind::If => "if",
            BlockKind::Unless => "unless",
            BlockKind::Each => "each",
            BlockKind::With => "with",
        }
    }
}

/// A parsed template piece.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    /// A variable, with its offset in the template (for errors).
    Var {
        path: String,
        offset: usize,
    },
    Block {
        kind: BlockKind,
        path: String,
        offset: usize,
        body: Vec<Node>,
        inverse: Vec<Node>,
    },
}

/// One `{{…}}` tag, as the scanner found it.
#[derive(Debug, Clone, PartialEq)]
struct Tag<'t> {
    /// The text between the braces and the `~` markers, trimmed.
    inner: &'t str,
    /// Byte offset of the opening braces.
    offset: usize,
    /// The whole tag as written, for messages.
    written: &'t str,
    /// `{{~`: trim the whitespace before.
    trim_before: bool,
    /// `~}}`: trim the whitespace after.
    trim_after: bool,
    /// A comment (`{{! … }}`, `{{!-- … --}}`).
    comment: bool,
}

/// The template split into text and tags, in order.
#[derive(Debug, Clone, PartialEq)]
enum Token<'t> {
    Text(String),
    Tag(Tag<'t>),
}

/// Split the text into tokens. Linear: each byte is looked at a bounded number of times.
fn scan(text: &str) -> Result<Vec<Token<'_>>, Failure> {
    let mut tokens = Vec::new();
    let mut literal = String::new();
    let mut rest_start = 0;
    while let Some(found) = text[rest_start..].find("{{") {
        let open = rest_start + found;
        // `\{{` is a literal `{{`.
        if text[..open].ends_with('\\') {
            literal.push_str(&text[rest_start..open - 1]);
            literal.push_str("{{");
            rest_start = open + 2;
            continue;
        }
        literal.push_str(&text[rest_start..open]);
        if text[open..].starts_with("{{{{") {
            return fail(
                open,
                format!(
                    "{} is a raw block; kiln templates have no raw blocks",
                    shown(&text[open..], 12)
                ),
            );
        }
        let triple = text[open..].starts_with("{{{");
        let body_start = open + if triple { 3 } else { 2 };
        let (trim_before, body_start) = match text[body_start..].strip_prefix('~') {
            Some(_) => (true, body_start + 1),
            None => (false, body_start),
        };
        let comment = text[body_start..].starts_with('!');
        let long_comment = text[body_start..].starts_with("!--");
        let close_marker = if triple {
            "}}}"
        } else if long_comment {
            "--}}"
        } else {
            "}}"
        };
        let Some(close_found) = text[body_start..].find(close_marker) else {
            return fail(
                open,
                format!(
                    "{} is never closed: end it with `{}`",
                    shown(&text[open..], 20),
                    close_marker
                ),
            );
        };
        let mut body_end = body_start + close_found;
        let end = body_end + close_marker.len();
        if long_comment {
            body_end += 2; // keep `--` inside the comment body
        }
        let mut body = &text[body_start..body_end];
        let trim_after = body.ends_with('~');
        if trim_after {
            body = &body[..body.len() - 1];
        }
        if !literal.is_empty() {
            tokens.push(Token::Text(std::mem::take(&mut literal)));
        }
        tokens.push(Token::Tag(Tag {
            inner: body.trim(),
            offset: open,
            written: &text[open..end],
            trim_before,
            trim_after,
            comment,
        }));
        rest_start = end;
    }
    literal.push_str(&text[rest_start..]);
    if !literal.is_empty() {
        tokens.push(Token::Text(literal));
    }
    Ok(tokens)
}

/// A tag as a message shows it: in backquotes, on one line (whitespace runs as one space,
/// other control characters escaped), at most a few dozen characters.
fn shown(text: &str, max: usize) -> String {
    let cut: String = text.chars().take(max.min(echo::MAX_ECHO_CHARS)).collect();
    let more = cut.len() < text.len();
    let one_line = clip(&cut);
    if more {
        format!("`{one_line}…`")
    } else {
        format!("`{one_line}`")
    }
}

/// What a tag is, once classified.
enum TagKind<'t> {
    Comment,
    Var(&'t str),
    Open(BlockKind, &'t str),
    Else,
    Close(&'t str),
}

/// Classify one tag, refusing what kiln does not support.
fn classify<'t>(tag: &Tag<'t>, dialect: Dialect) -> Result<TagKind<'t>, Failure> {
    let inner = tag.inner;
    let written = shown(tag.written, 60);
    let offset = tag.offset;
    let value_only = |what: &str| -> Result<TagKind<'t>, Failure> {
        fail(
            offset,
            format!(
                "{written} is {what}; an overlay value takes only variables, such as {{{{overlay}}}} (blocks and comments are for extra/*.yaml.hbs manifests)"
            ),
        )
    };
    if tag.comment {
        return match dialect {
            Dialect::Value => value_only("a comment"),
            Dialect::Manifest => Ok(TagKind::Comment),
        };
    }
    let partial = "kiln templates have no partials: write the text out";
    if inner.starts_with("#>") {
        return fail(offset, format!("{written} is a partial block; {partial}"));
    }
    if let Some(decorated) = inner.strip_prefix("#*") {
        let what = if decorated.trim_start().starts_with("inline") {
            format!("an inline partial; {partial}")
        } else {
            "a decorator block; kiln templates have no decorators".to_string()
        };
        return fail(offset, format!("{written} is {what}"));
    }
    if inner.starts_with('*') {
        return fail(
            offset,
            format!("{written} is a decorator; kiln templates have no decorators"),
        );
    }
    if inner.starts_with('>') {
        return fail(offset, format!("{written} is a partial; {partial}"));
    }
    if inner.starts_with('&') || inner.starts_with('{') {
        return fail(
            offset,
            format!("{written} is not a kiln template tag; write {{{{name}}}}"),
        );
    }
    if let Some(open) = inner.strip_prefix('#') {
        if dialect == Dialect::Value {
            return value_only("a block");
        }
        let (name, args) = split_word(open);
        let kind = match name {
            "if" => BlockKind::If,
            "unless" => BlockKind::Unless,
            "each" => BlockKind::Each,
            "with" => BlockKind::With,
            "" => {
                return fail(
                    offset,
                    format!("{written} opens a block with no name; write {{{{#if name}}}}"),
                );
            }
            other => {
                return fail(
                    offset,
                    format!(
                        "{written} uses the block helper `{}`, which kiln does not define; kiln has if, unless, each and with",
                        clip(other)
                    ),
                );
            }
        };
        let path = single_path(args).ok_or_else(|| {
            (
                offset,
                Problem::Other(format!(
                    "{written}: `{}` takes exactly one variable, such as {{{{#{} namespace}}}} (no helpers, literals, `as |x|` or key=value)",
                    kind.name(),
                    kind.name()
                )),
            )
        })?;
        return Ok(TagKind::Open(kind, path));
    }
    if let Some(close) = inner.strip_prefix('/') {
        if dialect == Dialect::Value {
            return value_only("the end of a block");
        }
        return Ok(TagKind::Close(close.trim()));
    }
    if inner == "else" || inner == "^" {
        if dialect == Dialect::Value {
            return value_only("an else");
        }
        return Ok(TagKind::Else);
    }
    if inner.starts_with('^') {
        return fail(
            offset,
            format!("{written} is an inverted block; write {{{{#unless name}}}} … {{{{/unless}}}} instead"),
        );
    }
    if let Some(rest) = inner.strip_prefix("else ") {
        return fail(
            offset,
            format!(
                "{written}: `else {}` chains are not supported; put a new block inside {{{{else}}}}",
                clip(split_word(rest).0)
            ),
        );
    }
    let (name, args) = split_word(inner);
    if !args.is_empty() || name.contains('(') {
        return fail(
            offset,
            format!(
                "{written} calls the helper `{}`, which kiln does not define; templates take variables such as {{{{namespace}}}}",
                clip(name.trim_start_matches('('))
            ),
        );
    }
    if !is_path(name) {
        return fail(
            offset,
            format!("{written} is not a variable name; write one such as {{{{buildkit.version}}}}"),
        );
    }
    Ok(TagKind::Var(name))
}

/// The first word and the rest, both trimmed.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], text[at..].trim()),
        None => (text, ""),
    }
}

/// Part of the template shown in a message: at most 80 characters, on one line.
fn clip(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .join(" ")
        .chars()
        .take(echo::MAX_ECHO_CHARS)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// The one variable a block takes, when that is all it has.
fn single_path(args: &str) -> Option<&str> {
    let (path, rest) = split_word(args);
    (rest.is_empty() && is_path(path)).then_some(path)
}

/// A variable path: `name`, `a.b`, `this`, `this.a`, `./a`, `../a`, `@index`, `@root.a`.
fn is_path(text: &str) -> bool {
    let mut rest = text;
    while let Some(stripped) = rest.strip_prefix("../") {
        rest = stripped;
    }
    let rest = rest.strip_prefix("./").unwrap_or(rest);
    let rest = rest.strip_prefix('@').unwrap_or(rest);
    !rest.is_empty()
        && rest.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// An open block while parsing.
struct Frame {
    kind: BlockKind,
    path: String,
    offset: usize,
    body: Vec<Node>,
    inverse: Option<Vec<Node>>,
}

impl Frame {
    fn current(&mut self) -> &mut Vec<Node> {
        match &mut self.inverse {
            Some(inverse) => inverse,
            None => &mut self.body,
        }
    }
}

/// Parse into nodes with an explicit stack: no recursion, and a nesting limit checked at
/// each open tag before anything after it is read.
fn parse(text: &str, dialect: Dialect) -> Result<Vec<Node>, Failure> {
    let mut tokens = scan(text)?;
    standalone(&mut tokens, dialect);
    let mut root: Vec<Node> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut trim_next = false;
    for token in tokens {
        let current = match stack.last_mut() {
            Some(frame) => frame.current(),
            None => &mut root,
        };
        let tag = match token {
            Token::Text(mut text) => {
                if std::mem::take(&mut trim_next) {
                    text = text.trim_start().to_string();
                }
                if !text.is_empty() {
                    current.push(Node::Text(text));
                }
                continue;
            }
            Token::Tag(tag) => tag,
        };
        if tag.trim_before
            && let Some(Node::Text(previous)) = current.last_mut()
        {
            previous.truncate(previous.trim_end().len());
        }
        trim_next = tag.trim_after;
        match classify(&tag, dialect)? {
            TagKind::Comment => {}
            TagKind::Var(path) => current.push(Node::Var {
                path: path.to_string(),
                offset: tag.offset,
            }),
            TagKind::Open(kind, path) => {
                if stack.len() >= MAX_NESTING {
                    return fail(
                        tag.offset,
                        format!(
                            "blocks nest more than {MAX_NESTING} deep, kiln's limit; flatten the template"
                        ),
                    );
                }
                stack.push(Frame {
                    kind,
                    path: path.to_string(),
                    offset: tag.offset,
                    body: Vec::new(),
                    inverse: None,
                });
            }
            TagKind::Else => match stack.last_mut() {
                Some(frame) if frame.inverse.is_none() => frame.inverse = Some(Vec::new()),
                Some(frame) => {
                    return fail(
                        tag.offset,
                        format!(
                            "a second {{{{else}}}} in the same {{{{#{}}}}} block",
                            frame.kind.name()
                        ),
                    );
                }
                None => return fail(tag.offset, "{{else}} outside any block"),
            },
            TagKind::Close(name) => {
                let Some(frame) = stack.pop() else {
                    return fail(
                        tag.offset,
                        format!("{} closes a block that was never opened", shown(tag.written, 40)),
                    );
                };
                if name != frame.kind.name() {
                    return fail(
                        tag.offset,
                        format!(
                            "{} closes the {{{{#{}}}}} block; write {{{{/{}}}}}",
                            shown(tag.written, 40),
                            frame.kind.name(),
                            frame.kind.name()
                        ),
                    );
                }
                let node = Node::Block {
                    kind: frame.kind,
                    path: frame.path,
                    offset: frame.offset,
                    body: frame.body,
                    inverse: frame.inverse.unwrap_or_default(),
                };
                match stack.last_mut() {
                    Some(parent) => parent.current().push(node),
                    None => root.push(node),
                }
            }
        }
    }
    if let Some(frame) = stack.last() {
        return fail(
            frame.offset,
            format!(
                "{{{{#{} {}}}}} is never closed: end it with {{{{/{}}}}}",
                frame.kind.name(),
                clip(&frame.path),
                frame.kind.name()
            ),
        );
    }
    Ok(root)
}

/// Handlebars' standalone rule: a block, else or comment tag alone on its line takes the
/// line's indentation and line break with it. Decided on the texts as written, then applied.
fn standalone(tokens: &mut [Token<'_>], dialect: Dialect) {
    if dialect == Dialect::Value {
        return;
    }
    let blank = |s: &str| s.chars().all(|c| c == ' ' || c == '\t');
    let alone: Vec<bool> = (0..tokens.len())
        .map(|i| {
            let Token::Tag(tag) = &tokens[i] else {
                return false;
            };
            let eligible = tag.comment
                || tag.inner.starts_with('#')
                || tag.inner.starts_with('/')
                || tag.inner == "else"
                || tag.inner == "^";
            let before_ok = match i.checked_sub(1).map(|j| &tokens[j]) {
                None => true,
                Some(Token::Text(text)) => match text.rfind('\n') {
                    Some(at) => blank(&text[at + 1..]),
                    None => i == 1 && blank(text),
                },
                Some(Token::Tag(_)) => false,
            };
            let after_ok = match tokens.get(i + 1) {
                None => true,
                Some(Token::Text(text)) => {
                    let head = text.split('\n').next().unwrap_or(text);
                    blank(head.trim_end_matches('\r')) && (text.contains('\n') || i + 2 == tokens.len())
                }
                Some(Token::Tag(_)) => false,
            };
            eligible && before_ok && after_ok
        })
        .collect();
    for i in 0..tokens.len() {
        let Token::Text(text) = &mut tokens[i] else {
            continue;
        };
        let tag_before = i > 0 && alone[i - 1];
        let tag_after = alone.get(i + 1).copied().unwrap_or(false);
        let start = if tag_before {
            text.find('\n').map_or(text.len(), |at| at + 1)
        } else {
            0
        };
        let end = if tag_after {
            text.rfind('\n').map_or(0, |at| at + 1)
        } else {
            text.len()
        };
        *text = text.get(start..end.max(start)).unwrap_or_default().to_string();
    }
}

// ---------------------------------------------------------------- rendering

/// Loop data of an `{{#each}}` entry.
#[derive(Debug, Clone)]
struct Data {
    index: usize,
    key: Option<String>,
    first: bool,
    last: bool,
}

/// One level of context: the root, a `with` value or an `each` entry.
struct Scope<'c> {
    value: &'c Value,
    data: Option<Data>,
}

/// Spend one step and, when writing, the bytes of `piece`.
fn spend(budget: &mut Budget, offset: usize, bytes: usize) -> Result<(), Failure> {
    if budget.steps_left == 0 {
        return fail(
            offset,
            format!("the templates take more than {MAX_STEPS} steps, kiln's limit; simplify the loops"),
        );
    }
    budget.steps_left -= 1;
    if bytes > budget.output_left {
        return fail(
            offset,
            format!("the templates write more than {MAX_OUTPUT_BYTES} bytes (16 MiB), kiln's limit"),
        );
    }
    budget.output_left -= bytes;
    Ok(())
}

fn render_nodes<'c>(
    nodes: &'c [Node],
    scopes: &mut Vec<Scope<'c>>,
    out: &mut String,
    budget: &mut Budget,
) -> Result<(), Failure> {
    for node in nodes {
        match node {
            Node::Text(text) => {
                spend(budget, 0, text.len())?;
                out.push_str(text);
            }
            Node::Var { path, offset } => {
                let value =
                    lookup(path, scopes).ok_or_else(|| (*offset, Problem::UnknownVariable(path.clone())))?;
                let text = match value {
                    Lookup::Value(Value::String(s)) => s.clone(),
                    Lookup::Value(Value::Null) => String::new(),
                    Lookup::Value(v @ (Value::Bool(_) | Value::Number(_))) => v.to_string(),
                    Lookup::Value(Value::Object(map)) => {
                        let names: Vec<&str> = map.keys().map(String::as_str).collect();
                        return fail(
                            *offset,
                            format!(
                                "`{path}` is a group of variables ({}), not a value: write one of them, such as {{{{{path}.{}}}}}",
                                names.join(", "),
                                names.first().copied().unwrap_or("name")
                            ),
                        );
                    }
                    Lookup::Value(Value::Array(_)) => {
                        return fail(*offset, format!("`{path}` is a list, not a value"));
                    }
                    Lookup::Data(text) => text,
                };
                spend(budget, *offset, text.len())?;
                out.push_str(&text);
            }
            Node::Block {
                kind,
                path,
                offset,
                body,
                inverse,
            } => {
                spend(budget, *offset, 0)?;
                let found =
                    lookup(path, scopes).ok_or_else(|| (*offset, Problem::UnknownVariable(path.clone())))?;
                let truthy = match &found {
                    Lookup::Value(value) => is_truthy(value),
                    Lookup::Data(text) => !text.is_empty() && text != "false" && text != "0",
                };
                match kind {
                    BlockKind::If | BlockKind::Unless => {
                        let chosen = if truthy == (*kind == BlockKind::If) {
                            body
                        } else {
                            inverse
                        };
                        render_nodes(chosen, scopes, out, budget)?;
                    }
                    BlockKind::With => match found {
                        Lookup::Value(value) if truthy => {
                            scopes.push(Scope { value, data: None });
                            let result = render_nodes(body, scopes, out, budget);
                            scopes.pop();
                            result?;
                        }
                        _ => render_nodes(inverse, scopes, out, budget)?,
                    },
                    BlockKind::Each => {
                        let entries: Vec<(Option<&'c String>, &'c Value)> = match found {
                            Lookup::Value(Value::Object(map)) => {
                                map.iter().map(|(k, v)| (Some(k), v)).collect()
                            }
                            Lookup::Value(Value::Array(items)) => items.iter().map(|v| (None, v)).collect(),
                            Lookup::Value(Value::Null) => Vec::new(),
                            _ => {
                                return fail(
                                    *offset,
                                    format!(
                                        "{{{{#each {path}}}}} needs a group of variables, such as {{{{#each buildkit}}}}; `{path}` is a single value"
                                    ),
                                );
                            }
                        };
                        if entries.is_empty() {
                            render_nodes(inverse, scopes, out, budget)?;
                        }
                        let count = entries.len();
                        for (index, (key, value)) in entries.into_iter().enumerate() {
                            spend(budget, *offset, 0)?;
                            scopes.push(Scope {
                                value,
                                data: Some(Data {
                                    index,
                                    key: key.cloned(),
                                    first: index == 0,
                                    last: index + 1 == count,
                                }),
                            });
                            let result = render_nodes(body, scopes, out, budget);
                            scopes.pop();
                            result?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// What a path names: a context value, or loop data (`@index`, `@key`, …) as text.
enum Lookup<'c> {
    Value(&'c Value),
    Data(String),
}

/// Resolve a path against the scopes (innermost last). Like Handlebars, a plain name is
/// looked up in the current scope only; `../` climbs one scope per step.
fn lookup<'c>(path: &str, scopes: &[Scope<'c>]) -> Option<Lookup<'c>> {
    let mut depth = scopes.len().checked_sub(1)?;
    let mut rest = path;
    while let Some(stripped) = rest.strip_prefix("../") {
        depth = depth.checked_sub(1)?;
        rest = stripped;
    }
    let rest = rest.strip_prefix("./").unwrap_or(rest);
    if let Some(name) = rest.strip_prefix('@') {
        let (head, tail) = match name.split_once('.') {
            Some((head, tail)) => (head, Some(tail)),
            None => (name, None),
        };
        if head == "root" {
            let root = scopes.first()?.value;
            return match tail {
                None => Some(Lookup::Value(root)),
                Some(tail) => walk(root, tail).map(Lookup::Value),
            };
        }
        let data = scopes[..=depth].iter().rev().find_map(|s| s.data.as_ref())?;
        if tail.is_some() {
            return None;
        }
        return match head {
            "index" => Some(Lookup::Data(data.index.to_string())),
            "key" => data.key.clone().map(Lookup::Data),
            "first" => Some(Lookup::Data(data.first.to_string())),
            "last" => Some(Lookup::Data(data.last.to_string())),
            _ => None,
        };
    }
    let value = scopes[depth].value;
    let rest = match rest.strip_prefix("this") {
        Some("") => return Some(Lookup::Value(value)),
        Some(tail) if tail.starts_with('.') => &tail[1..],
        _ => rest,
    };
    walk(value, rest).map(Lookup::Value)
}

fn walk<'c>(value: &'c Value, dotted: &str) -> Option<&'c Value> {
    dotted
        .split('.')
        .try_fold(value, |v, key| v.as_object()?.get(key))
}

/// Handlebars truthiness: false, null, "", 0, [] and {} are false.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Value {
        json!({
            "overlay": "dev",
            "namespace": "buildkit-dev",
            "buildkit": {"version": "v0.23.2", "image": "moby/buildkit", "serviceName": "buildkitd"},
            "kiln": {"version": "0.1.0", "image": "kiln:0.1.0"},
            "empty": "",
        })
    }

    fn value(text: &str) -> Result<String, TemplateError> {
        render(text, &context(), Dialect::Value, &mut Budget::default())
    }

    fn manifest(text: &str) -> Result<String, TemplateError> {
        render(text, &context(), Dialect::Manifest, &mut Budget::default())
    }

    fn message(result: Result<String, TemplateError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn variables_are_substituted_without_escaping() {
        assert_eq!(value("ns-{{overlay}}").unwrap(), "ns-dev");
        assert_eq!(
            value("{{ buildkit.version }}/{{{namespace}}}").unwrap(),
            "v0.23.2/buildkit-dev"
        );
        assert_eq!(value("a<&>{{overlay}}\"'").unwrap(), "a<&>dev\"'");
        assert_eq!(value("no template").unwrap(), "no template");
        assert_eq!(value(r"lit \{{overlay}}").unwrap(), "lit {{overlay}}");
        assert_eq!(value("a {{~overlay~}} b").unwrap(), "adevb");
    }

    #[test]
    fn unknown_variables_are_errors_with_their_place() {
        let err = value("x\n  {{nope}}").unwrap_err();
        assert_eq!(err.problem, Problem::UnknownVariable("nope".into()));
        assert_eq!((err.line, err.column), (2, 3));
        assert!(message(value("{{buildkit}}")).contains("`buildkit` is a group of variables"));
    }

    #[test]
    fn values_refuse_everything_but_variables() {
        for (text, what) in [
            ("{{#if overlay}}x{{/if}}", "is a block"),
            ("{{! note }}", "is a comment"),
            ("{{> p}}", "is a partial"),
            (
                "{{#*inline \"p\"}}{{> p}}{{/inline}}{{> p}}",
                "is an inline partial",
            ),
            ("{{* deco}}", "is a decorator"),
            ("{{{{raw}}}}x{{{{/raw}}}}", "is a raw block"),
            ("{{lookup buildkit \"version\"}}", "calls the helper `lookup`"),
            ("{{else}}", "is an else"),
            ("{{overlay", "is never closed"),
            ("{{a b=c}}", "calls the helper `a`"),
            ("{{(x)}}", "calls the helper `x)`"),
            ("{{[odd]}}", "is not a variable name"),
        ] {
            let shown = message(value(text));
            assert!(shown.contains(what), "{text}: {shown}");
        }
    }

    #[test]
    fn manifests_have_the_four_blocks() {
        let text = "{{#if namespace}}ns: {{namespace}}{{else}}none{{/if}}\n{{#unless empty}}u{{/unless}}\n{{#each buildkit}}{{@index}}:{{@key}}={{this}}{{#if @last}}.{{else}},{{/if}}{{/each}}\n{{#with kiln}}{{version}} of {{../overlay}} {{@root.namespace}}{{/with}}";
        assert_eq!(
            manifest(text).unwrap(),
            "ns: buildkit-dev\nu\n0:image=moby/buildkit,1:serviceName=buildkitd,2:version=v0.23.2.\n0.1.0 of dev buildkit-dev"
        );
        assert_eq!(manifest("{{#if empty}}a{{else}}b{{/if}}").unwrap(), "b");
        assert_eq!(manifest("{{#each empty}}{{else}}none{{/each}}").unwrap_err().problem, Problem::Other("{{#each empty}} needs a group of variables, such as {{#each buildkit}}; `empty` is a single value".into()));
        assert_eq!(manifest("{{! a comment }}x{{!-- }} --}}").unwrap(), "x");
    }

    #[test]
    fn standalone_block_lines_disappear() {
        let text = "labels:\n  {{#each buildkit}}\n  {{@key}}: \"{{this}}\"\n  {{/each}}\nend: 1\n";
        assert_eq!(
            manifest(text).unwrap(),
            "labels:\n  image: \"moby/buildkit\"\n  serviceName: \"buildkitd\"\n  version: \"v0.23.2\"\nend: 1\n"
        );
    }

    #[test]
    fn manifests_refuse_partials_helpers_and_unknown_blocks() {
        for (text, what) in [
            (
                "{{#*inline \"p\"}}{{> p}}{{/inline}}{{> p}}",
                "is an inline partial",
            ),
            ("{{#> layout}}x{{/layout}}", "is a partial block"),
            ("{{> p}}", "is a partial"),
            (
                "{{#each buildkit as |v k|}}{{/each}}",
                "takes exactly one variable",
            ),
            (
                "{{#if (eq overlay \"dev\")}}{{/if}}",
                "takes exactly one variable",
            ),
            ("{{#repeat 3}}x{{/repeat}}", "the block helper `repeat`"),
            ("{{#if overlay}}x{{/each}}", "closes the {{#if}} block"),
            ("{{#if overlay}}x", "{{#if overlay}} is never closed"),
            ("x{{/if}}", "closes a block that was never opened"),
            ("{{#if overlay}}a{{else}}b{{else}}c{{/if}}", "a second {{else}}"),
            (
                "{{#if overlay}}a{{else if namespace}}b{{/if}}",
                "`else if` chains are not supported",
            ),
            ("{{^overlay}}x{{/overlay}}", "inverted block"),
            ("{{json overlay}}", "calls the helper `json`"),
        ] {
            let shown = message(manifest(text));
            assert!(shown.contains(what), "{text}: {shown}");
        }
    }

    #[test]
    fn deep_nesting_fails_before_reading_further() {
        let deep = format!("{}x{}", "{{#if overlay}}".repeat(5_000), "{{/if}}".repeat(5_000));
        let err = manifest(&deep).unwrap_err();
        assert!(err.to_string().contains("blocks nest more than 16 deep"), "{err}");
        assert_eq!(err.column, 16 * 15 + 1);
        let ok = format!("{}x{}", "{{#if overlay}}".repeat(16), "{{/if}}".repeat(16));
        assert_eq!(manifest(&ok).unwrap(), "x");
    }

    #[test]
    fn output_and_work_are_bounded() {
        // 60,000 variables render in linear time.
        let many = "{{overlay}}".repeat(60_000);
        assert_eq!(value(&many).unwrap().len(), 3 * 60_000);
        // A shared budget stops many renders adding up.
        let mut budget = Budget {
            output_left: 10,
            steps_left: 1_000,
        };
        assert!(render("{{namespace}}", &context(), Dialect::Value, &mut budget).is_err());
        // Nested loops over the context stop at the step limit, not after 3^16 rounds.
        let loops = format!(
            "{}{}",
            "{{#each @root.buildkit}}".repeat(16),
            "{{/each}}".repeat(16)
        );
        let mut budget = Budget {
            output_left: MAX_OUTPUT_BYTES,
            steps_left: 100_000,
        };
        let err = render(&loops, &context(), Dialect::Manifest, &mut budget).unwrap_err();
        assert!(err.to_string().contains("steps"), "{err}");
    }

    #[test]
    fn messages_are_one_line() {
        // Found by the fuzzer: a tag spanning lines was quoted with its line break.
        let shown = message(manifest("b: \"{{name\u{ff}\n{{else}}"));
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.contains("`{{name\u{ff} {{else}}`"), "{shown}");
        let shown = message(value("{{a\u{1}b}}"));
        assert!(
            shown.starts_with("`{{a\\u{1}b}}` is not a variable name"),
            "{shown}"
        );
    }

    #[test]
    fn messages_never_quote_a_key_line() {
        // Found by the fuzzer: a tag spanning the lines of a key block quoted them.
        let text = "-----BEGIN PRIVATE KEY-----\n{{els\nQUJDREVGR0hJSktMTU5PUFFSU1RV\n}}\n-----END PRIVATE KEY-----\n";
        let shown = message(manifest(text));
        assert!(!shown.contains("QUJDREVGR0hJSktMTU5PUFFSU1RV"), "{shown}");
        assert!(shown.contains("calls the helper `els`"), "{shown}");
    }

    #[test]
    fn long_tags_are_cut_in_messages() {
        let text = format!("{{{{> {}}}}}", "p".repeat(10_000));
        let shown = message(value(&text));
        assert!(shown.len() < 300, "{shown}");
    }
}
