//! Workgroup-memory races that lavapipe cannot show, found in naga's IR of every kernel.
//!
//! llvmpipe runs a workgroup as SIMD chunks of invocations, each chunk up to the next
//! barrier before the next starts, so a read of what a lower invocation wrote with no
//! barrier between sees the written value there, and a race on a GPU. (Removing the
//! barrier at the end of `attention_split_groups.wgsl`'s split loop passes every lavapipe
//! test; this check names the five compositions it breaks.)
//!
//! The check walks each entry point (calls inlined, both branches of every `if`, loops
//! twice so that an iteration meets what the previous one left) and keeps, per workgroup
//! variable, the stores and loads since the last `workgroupBarrier` or
//! `workgroupUniformLoad`. Indices are rendered as expressions with the terms that depend
//! on the invocation (its local index or id, or its subgroup lane, and locals given such
//! values) marked; an index's *region* is its invocation terms alone (`2 * (32 * slot +
//! 12) + h` is in `2 * 32 * slot + h`). In one interval:
//! - a store and another access of the same variable race unless both are in the same
//!   invocation-dependent region (each invocation then touches its own elements);
//! - a store outside any invocation-dependent region races with itself, unless an
//!   enclosing `if` admits one invocation (`local == c`).
//!
//! It assumes that distinct invocations have disjoint regions (an index such as
//! `local / 4` shared by four invocations, or a butterfly's `i` and `i + half` of
//! another pair, would pass unchecked) and that workgroup memory is not reached through
//! pointer arguments (it stops if it is).

use std::collections::{BTreeSet, HashMap};

use naga::{
    AddressSpace, Binding, Block, BuiltIn, Expression, Function, Handle, Module, Statement,
};

use super::ALL;

/// The mark in a rendered index of a term that depends on the invocation.
const INVOCATION: &str = "@inv";

/// A rendered expression: sums, differences and products kept as trees (to find an
/// index's invocation terms through them), everything else as text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sym {
    Term(String),
    Add(Box<Sym>, Box<Sym>),
    Sub(Box<Sym>, Box<Sym>),
    Mul(Box<Sym>, Box<Sym>),
}

impl Sym {
    fn text(&self) -> String {
        match self {
            Sym::Term(t) => t.clone(),
            Sym::Add(l, r) => format!("({} + {})", l.text(), r.text()),
            Sym::Sub(l, r) => format!("({} - {})", l.text(), r.text()),
            Sym::Mul(l, r) => format!("({} * {})", l.text(), r.text()),
        }
    }

    fn invocation(&self) -> bool {
        self.text().contains(INVOCATION)
    }

    /// The invocation-dependent terms of the sum this is, products by other factors
    /// distributed over sums.
    fn terms(&self) -> Vec<String> {
        match self {
            Sym::Add(l, r) => [l.terms(), r.terms()].concat(),
            Sym::Sub(l, r) if !r.invocation() => l.terms(),
            Sym::Mul(l, r) if !l.invocation() => r
                .terms()
                .into_iter()
                .map(|t| format!("{}*{t}", l.text()))
                .collect(),
            Sym::Mul(l, r) if !r.invocation() => l
                .terms()
                .into_iter()
                .map(|t| format!("{t}*{}", r.text()))
                .collect(),
            other if other.invocation() => vec![other.text()],
            _ => Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    variable: String,
    store: bool,
    index: String,
    line: u32,
}

/// A store and an access of the same workgroup variable with no barrier between them,
/// by (possibly) different invocations: lines of the composed source and the regions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Race {
    variable: String,
    store_line: u32,
    access_line: u32,
    store_region: String,
    access_region: String,
}

/// What the walk of one entry point found: pairs of a store and a conflicting access.
#[derive(Default)]
struct Walk {
    races: BTreeSet<Race>,
    /// Workgroup accesses walked (so that a test sees the walk reach them).
    accesses: usize,
    /// How many enclosing `if`s admit one invocation only (`local == c`).
    single: u32,
}

/// One function being walked: how its arguments render (the caller's expressions, or the
/// entry point's built-ins) and its locals that hold invocation-dependent values.
struct Frame<'a> {
    function: &'a Function,
    arguments: Vec<Sym>,
    invocation_locals: BTreeSet<Handle<naga::LocalVariable>>,
    rendered: HashMap<Handle<Expression>, Sym>,
}

struct Checker<'a> {
    module: &'a Module,
    source: &'a str,
}

impl<'a> Checker<'a> {
    fn line(&self, frame: &Frame, expression: Handle<Expression>) -> u32 {
        frame
            .function
            .expressions
            .get_span(expression)
            .location(self.source)
            .line_number
    }

    /// The expression as text, with invocation-dependent terms marked.
    fn render(&self, frame: &mut Frame<'a>, expression: Handle<Expression>) -> Sym {
        if let Some(text) = frame.rendered.get(&expression) {
            return text.clone();
        }
        let t = |frame: &mut Frame<'a>, e: Handle<Expression>| self.render(frame, e).text();
        let text = match &frame.function.expressions[expression] {
            Expression::Literal(literal) => format!("{literal:?}"),
            Expression::Constant(c) => format!("const{}", c.index()),
            Expression::Override(o) => format!("override{}", o.index()),
            Expression::ZeroValue(_) => "0".into(),
            Expression::FunctionArgument(i) => {
                let argument = frame.arguments[*i as usize].clone();
                frame.rendered.insert(expression, argument.clone());
                return argument;
            }
            Expression::GlobalVariable(g) => self.module.global_variables[*g]
                .name
                .clone()
                .unwrap_or_default(),
            Expression::LocalVariable(l) => {
                let mark = if frame.invocation_locals.contains(l) {
                    INVOCATION
                } else {
                    ""
                };
                format!("local{}{mark}", l.index())
            }
            Expression::Load { pointer } => format!("*{}", t(frame, *pointer)),
            Expression::Access { base, index } => {
                let (b, i) = (t(frame, *base), t(frame, *index));
                format!("{b}[{i}]")
            }
            Expression::AccessIndex { base, index } => {
                format!("{}.{index}", t(frame, *base))
            }
            Expression::Swizzle {
                vector, pattern, ..
            } => format!("{}.{pattern:?}", t(frame, *vector)),
            Expression::Splat { value, .. } => format!("splat({})", t(frame, *value)),
            Expression::Unary { op, expr } => format!("({op:?} {})", t(frame, *expr)),
            Expression::Binary { op, left, right } => {
                let (l, r) = (self.render(frame, *left), self.render(frame, *right));
                let node = match op {
                    naga::BinaryOperator::Add => Sym::Add(Box::new(l), Box::new(r)),
                    naga::BinaryOperator::Subtract => Sym::Sub(Box::new(l), Box::new(r)),
                    naga::BinaryOperator::Multiply => Sym::Mul(Box::new(l), Box::new(r)),
                    _ => Sym::Term(format!("({} {op:?} {})", l.text(), r.text())),
                };
                frame.rendered.insert(expression, node.clone());
                return node;
            }
            Expression::Select {
                condition,
                accept,
                reject,
            } => {
                let c = t(frame, *condition);
                let a = t(frame, *accept);
                let r = t(frame, *reject);
                format!("select({c}, {a}, {r})")
            }
            Expression::Math {
                fun,
                arg,
                arg1,
                arg2,
                ..
            } => {
                let mut parts = vec![t(frame, *arg)];
                for extra in [arg1, arg2].into_iter().flatten() {
                    parts.push(t(frame, *extra));
                }
                format!("{fun:?}({})", parts.join(", "))
            }
            Expression::As { expr, kind, .. } => {
                format!("as{kind:?}({})", t(frame, *expr))
            }
            Expression::Compose { components, .. } => {
                let parts: Vec<String> = components.clone().iter().map(|c| t(frame, *c)).collect();
                format!("compose({})", parts.join(", "))
            }
            // Results of calls and subgroup operations: values nothing else is equal to.
            _ => format!("value{}", expression.index()),
        };
        let sym = Sym::Term(text);
        frame.rendered.insert(expression, sym.clone());
        sym
    }

    /// The invocation's region an index falls in: its invocation-dependent terms
    /// ([`Sym::terms`]; `2 * (32 * slot + 12) + h` and `2 * (32 * slot + 13) + h` are both
    /// in `2 * 32 * slot + h`; `i` and `i + half` of a butterfly stage both in `i`).
    fn region(&self, frame: &mut Frame<'a>, index: Handle<Expression>) -> String {
        let mut terms = self.render(frame, index).terms();
        terms.sort();
        terms.join(" + ")
    }

    /// The workgroup variable `pointer` points into, and the rendered index path (each
    /// index as its [`Checker::region`]).
    fn workgroup_target(
        &self,
        frame: &mut Frame<'a>,
        pointer: Handle<Expression>,
    ) -> Option<(String, String)> {
        let mut path = Vec::new();
        let mut current = pointer;
        loop {
            match &frame.function.expressions[current] {
                Expression::Access { base, index } => {
                    let (base, index) = (*base, *index);
                    path.push(self.region(frame, index));
                    current = base;
                }
                Expression::AccessIndex { base, index } => {
                    path.push(index.to_string());
                    current = *base;
                }
                Expression::GlobalVariable(g) => {
                    let global = &self.module.global_variables[*g];
                    if global.space != AddressSpace::WorkGroup {
                        return None;
                    }
                    path.reverse();
                    return Some((global.name.clone().unwrap_or_default(), path.join("][")));
                }
                Expression::FunctionArgument(i) => {
                    let ty = frame.function.arguments[*i as usize].ty;
                    let into_workgroup = matches!(
                        self.module.types[ty].inner,
                        naga::TypeInner::Pointer {
                            space: AddressSpace::WorkGroup,
                            ..
                        }
                    );
                    assert!(
                        !into_workgroup,
                        "a pointer argument into workgroup memory: the checker cannot follow it"
                    );
                    return None;
                }
                _ => return None,
            }
        }
    }

    fn record(
        &self,
        frame: &mut Frame<'a>,
        state: &mut BTreeSet<Access>,
        walk: &mut Walk,
        pointer: Handle<Expression>,
        store: bool,
    ) {
        let Some((variable, index)) = self.workgroup_target(frame, pointer) else {
            return;
        };
        let access = Access {
            variable,
            store,
            index,
            line: self.line(frame, pointer),
        };
        walk.accesses += 1;
        // A store every invocation makes to the same element races with itself.
        if store && !access.index.contains(INVOCATION) && walk.single == 0 {
            walk.races.insert(Race {
                variable: access.variable.clone(),
                store_line: access.line,
                access_line: access.line,
                store_region: access.index.clone(),
                access_region: "(every invocation)".into(),
            });
        }
        for other in state.iter() {
            if other.variable != access.variable || !(other.store || access.store) {
                continue;
            }
            let own_element = other.index == access.index && access.index.contains(INVOCATION);
            if !own_element {
                let (store, then) = if access.store {
                    (&access, other)
                } else {
                    (other, &access)
                };
                walk.races.insert(Race {
                    variable: access.variable.clone(),
                    store_line: store.line,
                    access_line: then.line,
                    store_region: store.index.clone(),
                    access_region: then.index.clone(),
                });
            }
        }
        state.insert(access);
    }

    /// Whether `condition` holds for one invocation at most: an equality with an
    /// invocation-dependent side, or a conjunction with one.
    fn one_invocation(&self, frame: &mut Frame<'a>, condition: Handle<Expression>) -> bool {
        match frame.function.expressions[condition] {
            Expression::Binary {
                op: naga::BinaryOperator::Equal,
                left,
                right,
            } => self.render(frame, left).invocation() || self.render(frame, right).invocation(),
            Expression::Binary {
                op: naga::BinaryOperator::LogicalAnd,
                left,
                right,
            } => self.one_invocation(frame, left) || self.one_invocation(frame, right),
            _ => false,
        }
    }

    /// Walks `block` from `state` (the accesses since the last barrier), returning the state
    /// at its end.
    fn block(
        &self,
        frame: &mut Frame<'a>,
        block: &'a Block,
        mut state: BTreeSet<Access>,
        walk: &mut Walk,
    ) -> BTreeSet<Access> {
        for statement in block.iter() {
            state = self.statement(frame, statement, state, walk);
        }
        state
    }

    fn statement(
        &self,
        frame: &mut Frame<'a>,
        statement: &'a Statement,
        mut state: BTreeSet<Access>,
        walk: &mut Walk,
    ) -> BTreeSet<Access> {
        match statement {
            Statement::Emit(range) => {
                for expression in range.clone() {
                    if let Expression::Load { pointer } = frame.function.expressions[expression] {
                        self.record(frame, &mut state, walk, pointer, false);
                    }
                }
            }
            Statement::Block(block) => state = self.block(frame, block, state, walk),
            Statement::If {
                condition,
                accept,
                reject,
            } => {
                let single = u32::from(self.one_invocation(frame, *condition));
                walk.single += single;
                let a = self.block(frame, accept, state.clone(), walk);
                walk.single -= single;
                let r = self.block(frame, reject, state, walk);
                state = a.union(&r).cloned().collect();
            }
            Statement::Switch { cases, .. } => {
                let mut out = BTreeSet::new();
                for case in cases {
                    out.extend(self.block(frame, &case.body, state.clone(), walk));
                }
                state = out;
            }
            Statement::Loop {
                body, continuing, ..
            } => {
                // Twice: the second pass starts from what an iteration leaves behind.
                let mut head = state.clone();
                for _ in 0..2 {
                    let end = self.block(frame, body, head.clone(), walk);
                    let end = self.block(frame, continuing, end, walk);
                    head = state.union(&end).cloned().collect();
                }
                state = head;
            }
            Statement::ControlBarrier(barrier) | Statement::MemoryBarrier(barrier)
                if barrier.contains(naga::Barrier::WORK_GROUP) =>
            {
                state.clear();
            }
            Statement::WorkGroupUniformLoad { .. } => state.clear(),
            Statement::Store { pointer, .. } => {
                self.record(frame, &mut state, walk, *pointer, true);
            }
            Statement::Call {
                function,
                arguments,
                result,
            } => {
                let arguments = arguments.iter().map(|a| self.render(frame, *a)).collect();
                let callee = &self.module.functions[*function];
                let mut inner = self.frame(callee, arguments);
                state = self.block(&mut inner, &callee.body, state, walk);
                if let Some(result) = result {
                    // The call's value renders as what the callee returns, where it
                    // returns one expression.
                    let mut returned = Vec::new();
                    collect_returns(&callee.body, &mut returned);
                    let texts: BTreeSet<Sym> = returned
                        .iter()
                        .map(|r| self.render(&mut inner, *r))
                        .collect();
                    if texts.len() == 1 {
                        if let Some(sym) = texts.into_iter().next() {
                            frame.rendered.insert(*result, sym);
                        }
                    }
                }
            }
            _ => {}
        }
        state
    }

    /// A frame for `function` whose arguments render as `arguments`; its locals that are
    /// ever given an invocation-dependent value are marked (to a fixed point).
    fn frame(&self, function: &'a Function, arguments: Vec<Sym>) -> Frame<'a> {
        let mut frame = Frame {
            function,
            arguments,
            invocation_locals: BTreeSet::new(),
            rendered: HashMap::new(),
        };
        loop {
            let before = frame.invocation_locals.len();
            let mut stores = Vec::new();
            collect_local_stores(&function.body, function, &mut stores);
            for (local, value) in stores {
                frame.rendered.clear();
                if self.render(&mut frame, value).invocation() {
                    frame.invocation_locals.insert(local);
                }
            }
            for (handle, local) in function.local_variables.iter() {
                if let Some(init) = local.init {
                    frame.rendered.clear();
                    if self.render(&mut frame, init).invocation() {
                        frame.invocation_locals.insert(handle);
                    }
                }
            }
            frame.rendered.clear();
            if frame.invocation_locals.len() == before {
                return frame;
            }
        }
    }
}

/// The values of every `return` in `block`, nested blocks included.
fn collect_returns(block: &Block, out: &mut Vec<Handle<Expression>>) {
    for statement in block.iter() {
        match statement {
            Statement::Return { value: Some(v) } => out.push(*v),
            Statement::Block(b) => collect_returns(b, out),
            Statement::If { accept, reject, .. } => {
                collect_returns(accept, out);
                collect_returns(reject, out);
            }
            Statement::Switch { cases, .. } => {
                for case in cases {
                    collect_returns(&case.body, out);
                }
            }
            Statement::Loop { body, .. } => collect_returns(body, out),
            _ => {}
        }
    }
}

/// Every `local = value` store in `block`, nested blocks included.
fn collect_local_stores(
    block: &Block,
    function: &Function,
    out: &mut Vec<(Handle<naga::LocalVariable>, Handle<Expression>)>,
) {
    for statement in block.iter() {
        match statement {
            Statement::Store { pointer, value } => {
                let mut current = *pointer;
                loop {
                    match function.expressions[current] {
                        Expression::Access { base, .. } | Expression::AccessIndex { base, .. } => {
                            current = base
                        }
                        Expression::LocalVariable(local) => {
                            out.push((local, *value));
                            break;
                        }
                        _ => break,
                    }
                }
            }
            Statement::Block(b) => collect_local_stores(b, function, out),
            Statement::If { accept, reject, .. } => {
                collect_local_stores(accept, function, out);
                collect_local_stores(reject, function, out);
            }
            Statement::Switch { cases, .. } => {
                for case in cases {
                    collect_local_stores(&case.body, function, out);
                }
            }
            Statement::Loop {
                body, continuing, ..
            } => {
                collect_local_stores(body, function, out);
                collect_local_stores(continuing, function, out);
            }
            _ => {}
        }
    }
}

/// How an entry point's argument renders: invocation-dependent built-ins are marked.
fn entry_argument(argument: &naga::FunctionArgument, module: &Module, i: usize) -> Sym {
    let invocation = |b: &Binding| {
        matches!(
            b,
            Binding::BuiltIn(
                BuiltIn::LocalInvocationId
                    | BuiltIn::LocalInvocationIndex
                    | BuiltIn::GlobalInvocationId
                    | BuiltIn::SubgroupInvocationId
            )
        )
    };
    Sym::Term(
        match (&argument.binding, &module.types[argument.ty].inner) {
            (Some(b), _) if invocation(b) => format!("arg{i}{INVOCATION}"),
            (None, naga::TypeInner::Struct { members, .. }) => {
                // A struct of built-ins: members render by name, invocation ones marked.
                let marked: Vec<String> = members
                    .iter()
                    .filter(|m| m.binding.as_ref().is_some_and(invocation))
                    .map(|m| m.name.clone().unwrap_or_default())
                    .collect();
                format!("arg{i}{{{}}}{INVOCATION}", marked.join(","))
            }
            _ => format!("arg{i}"),
        },
    )
}

/// The file and line of line `line` of `kernel`'s composed source.
fn file_line(kernel: &super::Kernel, line: u32) -> String {
    let mut first = 1 + u32::from(kernel.needs_f16);
    for (name, text) in kernel.files() {
        let lines = text.lines().count() as u32 + u32::from(text.ends_with('\n'));
        if line < first + lines {
            return format!("{name}:{}", line - first + 1);
        }
        first += lines;
    }
    format!("?:{line}")
}

/// The races [`Checker`] finds in `source`, with their entry points, and how many
/// workgroup accesses it walked.
fn races(source: &str) -> (Vec<(String, Race)>, usize) {
    let module = naga::front::wgsl::parse_str(source).expect("validated elsewhere");
    let checker = Checker {
        module: &module,
        source,
    };
    let (mut found, mut accesses) = (Vec::new(), 0);
    for entry in &module.entry_points {
        let arguments = entry
            .function
            .arguments
            .iter()
            .enumerate()
            .map(|(i, a)| entry_argument(a, &module, i))
            .collect();
        let mut frame = checker.frame(&entry.function, arguments);
        let mut walk = Walk::default();
        checker.block(&mut frame, &entry.function.body, BTreeSet::new(), &mut walk);
        found.extend(walk.races.into_iter().map(|r| (entry.name.clone(), r)));
        accesses += walk.accesses;
    }
    (found, accesses)
}

#[test]
fn the_checker_finds_races_and_passes_ordered_accesses() {
    let shader = |body: &str| {
        format!(
            "var<workgroup> a: array<f32, 64>;\nvar<workgroup> s: f32;\n\
             @group(0) @binding(0) var<storage, read_write> out: array<f32>;\n\
             @compute @workgroup_size(64)\n\
             fn main(@builtin(local_invocation_index) lid: u32) {{\n{body}\n}}\n"
        )
    };
    let racy = [
        // A broadcast without a barrier: lane 0 writes, the others read.
        "if (lid == 0u) { s = 1.0; }\nout[lid] = s;",
        // A neighbour's element.
        "a[lid] = 1.0;\nout[lid] = a[lid ^ 1u];",
        // Across loop iterations: the next iteration reads before the barrier.
        "for (var i = 0u; i < 4u; i++) {\nlet y = a[(lid + 1u) % 64u];\nworkgroupBarrier();\n\
         a[lid] = y;\n}",
        // Through a helper function.
        "put(lid);\nout[lid] = a[63u - lid];",
        // Every invocation writes the same element.
        "s = 1.0;",
    ];
    let valid = |source: &str| {
        let module = naga::front::wgsl::parse_str(source).expect("parses");
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{source}: {e}"));
    };
    for body in racy {
        let source = shader(body) + "fn put(i: u32) { a[i] = 2.0; }\n";
        valid(&source);
        assert!(!races(&source).0.is_empty(), "not found: {body}");
    }
    let ordered = [
        "if (lid == 0u) { s = 1.0; }\nworkgroupBarrier();\nout[lid] = s;",
        "a[lid] = 1.0;\nworkgroupBarrier();\nout[lid] = a[lid ^ 1u];",
        "for (var i = 0u; i < 4u; i++) {\nlet y = a[(lid + 1u) % 64u];\nworkgroupBarrier();\n\
         a[lid] = y;\nworkgroupBarrier();\n}",
        "a[lid] = 1.0;\na[lid] = a[lid] + 1.0;\nout[lid] = a[lid];",
        "a[2u * lid + 1u] = 1.0;\nout[lid] = a[2u * lid];",
        "let t = workgroupUniformLoad(&s);\nif (lid == 0u) { s = t + 1.0; }",
    ];
    for body in ordered {
        let source = shader(body);
        valid(&source);
        assert_eq!(races(&source).0, Vec::new(), "{body}");
    }
}

#[test]
fn workgroup_memory_is_ordered_by_barriers() {
    let (mut report, mut walked) = (Vec::new(), 0);
    for kernel in ALL {
        let source = kernel.composed_source();
        let (found, accesses) = races(&source);
        walked += accesses;
        for (entry, race) in found {
            report.push(format!(
                "{}::{entry} `{}`: store at {} [{}], access at {} [{}]",
                kernel.name,
                race.variable,
                file_line(&kernel, race.store_line),
                race.store_region,
                file_line(&kernel, race.access_line),
                race.access_region,
            ));
        }
    }
    assert!(
        walked > 1000,
        "the walk reached {walked} workgroup accesses"
    );
    assert!(report.is_empty(), "{}", report.join("\n"));
}
