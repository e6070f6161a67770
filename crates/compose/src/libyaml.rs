//! A safe event reader over libyaml (the `unsafe-libyaml` translation of libyaml to Rust).
//!
//! go-yaml v3, the parser compose-go uses, is itself a translation of libyaml's scanner and
//! parser to Go, so libyaml's events accept the same documents and give the same results (a
//! flow sequence whose closing `]` is indented less than its items, comments inside flow
//! collections, ...), where a parser written from the YAML specification refuses some of them.
//! All `unsafe` of the crate is in this module.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use unsafe_libyaml as unsafe_sys;

/// A position: 0-based line and column (in characters), as libyaml counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub line: u64,
    pub column: u64,
}

impl Mark {
    fn of(m: unsafe_sys::yaml_mark_t) -> Mark {
        Mark {
            line: m.line,
            column: m.column,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Quoted,
    Block,
}

#[derive(Debug)]
pub enum Event {
    StreamStart,
    StreamEnd,
    /// With its `%YAML` directive's version, if any.
    DocumentStart {
        version: Option<(i32, i32)>,
    },
    DocumentEnd,
    /// The anchor's name.
    Alias(String),
    Scalar {
        value: String,
        style: Style,
        anchor: Option<String>,
        /// The resolved tag: `!reset`, `tag:yaml.org,2002:str`, ...
        tag: Option<String>,
        /// The scalar as written (quotes and escapes included).
        raw: String,
    },
    SequenceStart {
        anchor: Option<String>,
        tag: Option<String>,
    },
    SequenceEnd,
    MappingStart {
        anchor: Option<String>,
        tag: Option<String>,
    },
    MappingEnd,
}

/// A libyaml parse error: what and where.
#[derive(Debug, Clone)]
pub struct Error {
    pub problem: String,
    pub mark: Mark,
    pub context: Option<String>,
}

pub struct Parser<'input> {
    parser: Box<MaybeUninit<unsafe_sys::yaml_parser_t>>,
    failed: bool,
    input: &'input str,
    _input: PhantomData<&'input str>,
}

impl<'input> Parser<'input> {
    /// A parser over `input`, which must outlive it (libyaml keeps a pointer to it).
    pub fn new(input: &'input str) -> Result<Parser<'input>, Error> {
        let mut parser = Box::new(MaybeUninit::<unsafe_sys::yaml_parser_t>::uninit());
        // SAFETY: `yaml_parser_initialize` initialises the boxed parser in place (the box never
        // moves its contents); the input outlives the parser ('input), and libyaml only reads it.
        unsafe {
            let p = parser.as_mut_ptr();
            if unsafe_sys::yaml_parser_initialize(p).fail {
                return Err(Error {
                    problem: "cannot initialise the YAML parser (out of memory)".into(),
                    mark: Mark { line: 0, column: 0 },
                    context: None,
                });
            }
            unsafe_sys::yaml_parser_set_encoding(p, unsafe_sys::YAML_UTF8_ENCODING);
            unsafe_sys::yaml_parser_set_input_string(p, input.as_ptr(), input.len() as u64);
        }
        Ok(Parser {
            parser,
            failed: false,
            input,
            _input: PhantomData,
        })
    }

    /// The next event and where it starts.
    pub fn next_event(&mut self) -> Result<(Event, Mark), Error> {
        let p = self.parser.as_mut_ptr();
        if self.failed {
            // SAFETY: the parser was initialised in `new`.
            return Err(unsafe { error(p) });
        }
        let mut event = MaybeUninit::<unsafe_sys::yaml_event_t>::uninit();
        // SAFETY: the parser is initialised; on success libyaml initialises `event`, which we
        // read and then free once with `yaml_event_delete`.
        unsafe {
            let e = event.as_mut_ptr();
            if unsafe_sys::yaml_parser_parse(p, e).fail {
                self.failed = true;
                return Err(error(p));
            }
            let mark = Mark::of((*e).start_mark);
            let converted = convert(&*e, self.input);
            unsafe_sys::yaml_event_delete(e);
            Ok((converted, mark))
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: the parser was initialised in `new` (a failed initialisation returns before a
        // `Parser` exists) and is deleted once.
        unsafe { unsafe_sys::yaml_parser_delete(self.parser.as_mut_ptr()) }
    }
}

/// SAFETY: `p` points at an initialised parser.
unsafe fn error(p: *mut unsafe_sys::yaml_parser_t) -> Error {
    // SAFETY: libyaml's problem and context are static C strings or null.
    unsafe {
        let parser = &*p;
        Error {
            problem: cstr(parser.problem.cast())
                .unwrap_or_else(|| "the YAML parser failed without saying why".into()),
            mark: Mark::of(parser.problem_mark),
            context: cstr(parser.context.cast()),
        }
    }
}

/// SAFETY: `ptr` is null or points at a NUL-terminated string.
unsafe fn cstr(ptr: *const std::ffi::c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: see above.
    Some(
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// SAFETY: `e` is an event libyaml initialised.
unsafe fn convert(e: &unsafe_sys::yaml_event_t, input: &str) -> Event {
    // SAFETY: each union field is read only for the event type that carries it.
    unsafe {
        match e.type_ {
            unsafe_sys::YAML_STREAM_START_EVENT => Event::StreamStart,
            unsafe_sys::YAML_DOCUMENT_START_EVENT => {
                let v = e.data.document_start.version_directive;
                Event::DocumentStart {
                    version: (!v.is_null()).then(|| ((*v).major, (*v).minor)),
                }
            }
            unsafe_sys::YAML_DOCUMENT_END_EVENT => Event::DocumentEnd,
            unsafe_sys::YAML_ALIAS_EVENT => {
                Event::Alias(cstr(e.data.alias.anchor.cast()).unwrap_or_default())
            }
            unsafe_sys::YAML_SCALAR_EVENT => {
                let s = e.data.scalar;
                let bytes = if s.value.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(s.value, s.length as usize)
                };
                Event::Scalar {
                    value: String::from_utf8_lossy(bytes).into_owned(),
                    style: match s.style {
                        unsafe_sys::YAML_PLAIN_SCALAR_STYLE => Style::Plain,
                        unsafe_sys::YAML_LITERAL_SCALAR_STYLE
                        | unsafe_sys::YAML_FOLDED_SCALAR_STYLE => Style::Block,
                        _ => Style::Quoted,
                    },
                    anchor: cstr(s.anchor.cast()),
                    tag: cstr(s.tag.cast()),
                    raw: input
                        .get(e.start_mark.index as usize..e.end_mark.index as usize)
                        .unwrap_or_default()
                        .to_string(),
                }
            }
            unsafe_sys::YAML_SEQUENCE_START_EVENT => Event::SequenceStart {
                anchor: cstr(e.data.sequence_start.anchor.cast()),
                tag: cstr(e.data.sequence_start.tag.cast()),
            },
            unsafe_sys::YAML_SEQUENCE_END_EVENT => Event::SequenceEnd,
            unsafe_sys::YAML_MAPPING_START_EVENT => Event::MappingStart {
                anchor: cstr(e.data.mapping_start.anchor.cast()),
                tag: cstr(e.data.mapping_start.tag.cast()),
            },
            unsafe_sys::YAML_MAPPING_END_EVENT => Event::MappingEnd,
            _ => Event::StreamEnd,
        }
    }
}
