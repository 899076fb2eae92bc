//! GPU hazards that lavapipe cannot show, found in naga's IR of every kernel: workgroup-
//! memory races and subgroup operations in divergent control flow.
//!
//! llvmpipe runs a workgroup as SIMD chunks of invocations, each chunk up to the next
//! barrier before the next starts, so a read of what a lower invocation wrote with no
//! barrier between sees the written value there, and a race on a GPU. (Removing the
//! barrier at the end of `attention_split_groups.wgsl`'s split loop passes every lavapipe
//! test; this check names the five compositions it breaks.) And its shuffles read the
//! whole SIMD vector, active lanes or not, where a GPU leaves a shuffle from an inactive
//! lane undefined.
//!
//! The walk covers each entry point (calls inlined, both branches of every `if`, loops
//! twice so that an iteration meets what the previous one left). Indices and conditions
//! are rendered as expressions with the terms that depend on the invocation marked: its
//! local index or id, its subgroup lane, locals given such values, and lane-varying
//! subgroup results (shuffles, scans). An index's *region* is its invocation terms alone
//! (`2 * (32 * slot + 12) + h` is in `2 * 32 * slot + h`).
//!
//! Races: per workgroup variable, the stores and loads since the last `workgroupBarrier`
//! or `workgroupUniformLoad`. In one interval, a store and another access of the same
//! variable race unless both are in the same invocation-dependent region (each invocation
//! then touches its own elements); a store outside any such region races with itself
//! unless an enclosing `if` admits one invocation (`local == c`). This assumes distinct
//! invocations have disjoint regions (an index such as `local / 4` shared by four
//! invocations, or a butterfly's `i` and `i + half` of another pair, would pass
//! unchecked) and that workgroup memory is not reached through pointer arguments (the walk
//! stops if it is).
//!
//! Divergence: a subgroup operation is divergent under an `if` on an invocation-dependent
//! condition, after a `return` under one (until the function ends), after a `break` (until
//! the loop ends, later iterations included) or a `continue` (until the iteration ends).
//! Whether the lanes a divergent shuffle reads share its condition needs the host's
//! constraints, so the tests list each such place with its review.

use std::collections::{BTreeSet, HashMap};

use naga::{
    AddressSpace, Binding, Block, BuiltIn, Expression, Function, Handle, Module, Statement,
};

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
pub(super) struct Race {
    pub variable: String,
    pub store_line: u32,
    pub access_line: u32,
    pub store_region: String,
    pub access_region: String,
}

/// Why the invocations of a subgroup may not all be running a statement: an enclosing
/// `if` on an invocation-dependent condition, or an earlier `return`, `break` or
/// `continue` under one (which holds until the function's end, the loop's end, or the
/// iteration's end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Divergence {
    Branch,
    Return,
    Break,
    Continue,
}

/// A subgroup operation where the subgroup's invocations may not all be active: the line
/// of the composed source, and the line of the condition that divided them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct DivergentSubgroupOp {
    pub line: u32,
    pub condition_line: u32,
}

/// What the walk of one entry point found: pairs of a store and a conflicting access, and
/// subgroup operations in divergent control flow.
#[derive(Default)]
struct Walk {
    races: BTreeSet<Race>,
    divergent_ops: BTreeSet<DivergentSubgroupOp>,
    /// Workgroup accesses walked (so that a test sees the walk reach them).
    accesses: usize,
    /// How many enclosing `if`s admit one invocation only (`local == c`).
    single: u32,
    /// The divergences in force, with the line of the condition behind each.
    divergences: Vec<(Divergence, u32)>,
}

/// One function being walked: how its arguments render (the caller's expressions, or the
/// entry point's built-ins) and its locals that hold invocation-dependent values.
struct Frame<'a> {
    function: &'a Function,
    arguments: Vec<Sym>,
    invocation_locals: BTreeSet<Handle<naga::LocalVariable>>,
    /// Results of subgroup operations that differ between lanes (shuffles, scans).
    lane_results: BTreeSet<Handle<Expression>>,
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
            _ if frame.lane_results.contains(&expression) => {
                format!("value{}{INVOCATION}", expression.index())
            }
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
                let divides = self.render(frame, *condition).invocation();
                let line = self.line(frame, *condition);
                if divides {
                    walk.divergences.push((Divergence::Branch, line));
                }
                walk.single += single;
                let a = self.block(frame, accept, state.clone(), walk);
                walk.single -= single;
                let r = self.block(frame, reject, state, walk);
                if divides {
                    walk.divergences.pop();
                    for kind in [Divergence::Return, Divergence::Break, Divergence::Continue] {
                        if escapes(accept, kind) || escapes(reject, kind) {
                            walk.divergences.push((kind, line));
                        }
                    }
                }
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
                body,
                continuing,
                break_if,
            } => {
                // Twice: the second pass starts from what an iteration leaves behind (and
                // with the divergence of invocations that left the loop in the first).
                let mut head = state.clone();
                let depth = walk.divergences.len();
                for _ in 0..2 {
                    let end = self.block(frame, body, head.clone(), walk);
                    // Invocations that skipped the rest of the body join again here.
                    let mut position = 0;
                    walk.divergences.retain(|(kind, _)| {
                        position += 1;
                        position <= depth || *kind != Divergence::Continue
                    });
                    let end = self.block(frame, continuing, end, walk);
                    if let Some(condition) = break_if {
                        if self.render(frame, *condition).invocation() {
                            let line = self.line(frame, *condition);
                            walk.divergences.push((Divergence::Break, line));
                        }
                    }
                    head = state.union(&end).cloned().collect();
                }
                walk.divergences.truncate(depth);
                state = head;
            }
            Statement::ControlBarrier(barrier) | Statement::MemoryBarrier(barrier)
                if barrier.contains(naga::Barrier::WORK_GROUP) =>
            {
                state.clear();
            }
            Statement::WorkGroupUniformLoad { .. } => state.clear(),
            Statement::SubgroupGather { result, .. }
            | Statement::SubgroupCollectiveOperation { result, .. }
            | Statement::SubgroupBallot { result, .. } => {
                if let Some(&(_, condition_line)) = walk.divergences.last() {
                    walk.divergent_ops.insert(DivergentSubgroupOp {
                        line: self.line(frame, *result),
                        condition_line,
                    });
                }
            }
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
                // A callee's early returns end with it.
                let depth = walk.divergences.len();
                state = self.block(&mut inner, &callee.body, state, walk);
                walk.divergences.truncate(depth);
                if let Some(result) = result {
                    // The call's value renders as what the callee returns, where it
                    // returns one expression.
                    let mut texts: BTreeSet<Sym> = returned_values(&callee.body)
                        .iter()
                        .map(|r| self.render(&mut inner, *r))
                        .collect();
                    if texts.len() == 1 {
                        let sym = texts.pop_first().expect("one rendering");
                        frame.rendered.insert(*result, sym);
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
        let lane_results = lane_results(&function.body);
        let mut frame = Frame {
            function,
            arguments,
            invocation_locals: BTreeSet::new(),
            lane_results,
            rendered: HashMap::new(),
        };
        let assignments = local_assignments(function);
        loop {
            let before = frame.invocation_locals.len();
            for &(local, value) in &assignments {
                frame.rendered.clear();
                if self.render(&mut frame, value).invocation() {
                    frame.invocation_locals.insert(local);
                }
            }
            frame.rendered.clear();
            if frame.invocation_locals.len() == before {
                return frame;
            }
        }
    }
}

/// Whether `block` holds a `kind` escape (`return` anywhere; `break` and `continue` only
/// where they leave the enclosing loop, not an inner loop or a `switch`).
fn escapes(block: &Block, kind: Divergence) -> bool {
    block.iter().any(|statement| match statement {
        Statement::Return { .. } => kind == Divergence::Return,
        Statement::Break => kind == Divergence::Break,
        Statement::Continue => kind == Divergence::Continue,
        Statement::Block(b) => escapes(b, kind),
        Statement::If { accept, reject, .. } => escapes(accept, kind) || escapes(reject, kind),
        Statement::Switch { cases, .. } => cases
            .iter()
            .any(|case| kind != Divergence::Break && escapes(&case.body, kind)),
        Statement::Loop {
            body, continuing, ..
        } => kind == Divergence::Return && (escapes(body, kind) || escapes(continuing, kind)),
        _ => false,
    })
}

/// Calls `visit` on every statement of `block`, nested blocks included.
fn for_each_statement<'b>(block: &'b Block, visit: &mut impl FnMut(&'b Statement)) {
    for statement in block.iter() {
        visit(statement);
        match statement {
            Statement::Block(b) => for_each_statement(b, visit),
            Statement::If { accept, reject, .. } => {
                for_each_statement(accept, visit);
                for_each_statement(reject, visit);
            }
            Statement::Switch { cases, .. } => {
                for case in cases {
                    for_each_statement(&case.body, visit);
                }
            }
            Statement::Loop {
                body, continuing, ..
            } => {
                for_each_statement(body, visit);
                for_each_statement(continuing, visit);
            }
            _ => {}
        }
    }
}

/// The results in `block` of subgroup operations whose value differs between lanes:
/// shuffles and scans (a reduction, a broadcast or a ballot is the same in every lane).
fn lane_results(block: &Block) -> BTreeSet<Handle<Expression>> {
    let mut out = BTreeSet::new();
    for_each_statement(block, &mut |statement| match statement {
        Statement::SubgroupGather { mode, result, .. }
            if !matches!(
                mode,
                naga::GatherMode::BroadcastFirst | naga::GatherMode::Broadcast(_)
            ) =>
        {
            out.insert(*result);
        }
        Statement::SubgroupCollectiveOperation {
            collective_op,
            result,
            ..
        } if *collective_op != naga::CollectiveOperation::Reduce => {
            out.insert(*result);
        }
        _ => {}
    });
    out
}

/// The values of every `return` in `block`.
fn returned_values(block: &Block) -> Vec<Handle<Expression>> {
    let mut out = Vec::new();
    for_each_statement(block, &mut |statement| {
        if let Statement::Return { value: Some(v) } = statement {
            out.push(*v);
        }
    });
    out
}

/// Every value `function` gives a local: its initializers, and every `local = value` store
/// (to the local or an element of it).
fn local_assignments(
    function: &Function,
) -> Vec<(Handle<naga::LocalVariable>, Handle<Expression>)> {
    let mut out: Vec<_> = function
        .local_variables
        .iter()
        .filter_map(|(handle, local)| local.init.map(|init| (handle, init)))
        .collect();
    for_each_statement(&function.body, &mut |statement| {
        if let Statement::Store { pointer, value } = statement {
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
    });
    out
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

/// What [`Checker`] found in one module: the races and the divergent subgroup operations
/// of its entry points (by name), and how many workgroup accesses it walked.
#[derive(Default)]
pub(super) struct Findings {
    pub races: Vec<(String, Race)>,
    pub divergent_ops: Vec<(String, DivergentSubgroupOp)>,
    pub accesses: usize,
}

/// Walks every entry point of the WGSL module `source`.
pub(super) fn check(source: &str) -> Findings {
    let module = naga::front::wgsl::parse_str(source).expect("validated elsewhere");
    let checker = Checker {
        module: &module,
        source,
    };
    let mut findings = Findings::default();
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
        let name = || entry.name.clone();
        findings
            .races
            .extend(walk.races.into_iter().map(|r| (name(), r)));
        findings
            .divergent_ops
            .extend(walk.divergent_ops.into_iter().map(|o| (name(), o)));
        findings.accesses += walk.accesses;
    }
    findings
}

mod tests;
