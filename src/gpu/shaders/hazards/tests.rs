//! The checks on synthetic shaders (each hazard found, its ordered form passed) and on
//! every kernel.

use super::check;
use crate::gpu::shaders::{Kernel, ALL};

/// The file and line of line `line` of `kernel`'s composed source.
fn file_line(kernel: &Kernel, line: u32) -> String {
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

/// Checks that [`check`] finds a hazard (`found`) in every shader of `hazards` and none in
/// `safe`, each made by `shader` and valid WGSL (subgroups allowed).
fn sorts(
    shader: impl Fn(&str) -> String,
    hazards: &[&str],
    safe: &[&str],
    found: impl Fn(&super::Findings) -> bool,
) {
    for (bodies, expected) in [(hazards, true), (safe, false)] {
        for body in bodies {
            let source = shader(body);
            let module = naga::front::wgsl::parse_str(&source).expect("parses");
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::SUBGROUP,
            )
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(found(&check(&source)), expected, "{body}");
        }
    }
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
    let ordered = [
        "if (lid == 0u) { s = 1.0; }\nworkgroupBarrier();\nout[lid] = s;",
        "a[lid] = 1.0;\nworkgroupBarrier();\nout[lid] = a[lid ^ 1u];",
        "for (var i = 0u; i < 4u; i++) {\nlet y = a[(lid + 1u) % 64u];\nworkgroupBarrier();\n\
         a[lid] = y;\nworkgroupBarrier();\n}",
        "a[lid] = 1.0;\na[lid] = a[lid] + 1.0;\nout[lid] = a[lid];",
        "a[2u * lid + 1u] = 1.0;\nout[lid] = a[2u * lid];",
        "let t = workgroupUniformLoad(&s);\nif (lid == 0u) { s = t + 1.0; }",
    ];
    let with_helper = |body: &str| shader(body) + "fn put(i: u32) { a[i] = 2.0; }\n";
    sorts(with_helper, &racy, &ordered, |f| !f.races.is_empty());
}

#[test]
fn workgroup_memory_is_ordered_by_barriers() {
    let (mut report, mut walked) = (Vec::new(), 0);
    for kernel in ALL {
        let source = kernel.composed_source();
        let findings = check(&source);
        walked += findings.accesses;
        for (entry, race) in findings.races {
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

#[test]
fn the_checker_finds_divergent_subgroup_operations() {
    let shader = |body: &str| {
        format!(
            "@group(0) @binding(0) var<storage, read_write> out: array<f32>;\n\
             fn pick(v: f32) -> f32 {{\nif (v > 0.0) {{ return v; }}\nreturn 0.0;\n}}\n\
             @compute @workgroup_size(64)\n\
             fn main(@builtin(local_invocation_index) lid: u32) {{\nlet x = f32(lid);\n{body}\n}}\n"
        )
    };
    let divergent = [
        "if (lid < 5u) { out[lid] = subgroupShuffleXor(x, 1u); }",
        "if (lid >= 40u) { return; }\nout[lid] = subgroupAdd(x);",
        "for (var i = lid; i < 64u; i += 16u) { out[i] = subgroupShuffleXor(x, 1u); }",
        "let y = subgroupShuffleXor(x, 1u);\nif (y > 0.0) { out[lid] = subgroupAdd(y); }",
    ];
    let uniform = [
        "let y = subgroupShuffleXor(x, 1u);\nif (lid < 5u) { out[lid] = y; }",
        "for (var i = 0u; i < 4u; i++) {\nout[lid] = subgroupAdd(x);\n\
         if (lid < 3u) { continue; }\nout[lid + 1u] = 0.0;\n}",
        "let s = subgroupAdd(x);\nif (s > 0.0) { out[lid] = subgroupMax(x); }",
        "out[lid] = pick(x);\nout[lid] = subgroupAdd(x);",
    ];
    sorts(shader, &divergent, &uniform, |f| {
        !f.divergent_ops.is_empty()
    });
}

/// Subgroup operations run where every invocation of the subgroup does, or where the lanes
/// they exchange with share the condition that divided them. Lavapipe cannot tell: its
/// shuffles read the whole SIMD vector, active or not; on a GPU a shuffle from an
/// inactive lane is undefined. The one such place, reviewed: the fused kernel's weighted
/// rows (`for (var r = phase; r < count; r = r + phases)`), whose row reads shuffle among a
/// row's L lanes, which share `phase` (L = d/16 a power of two, the host's condition for
/// that path) and so leave the loop together.
#[test]
fn subgroup_operations_run_where_their_lanes_do() {
    let reviewed = "for (var r = phase; r < count; r = r + phases) {";
    let mut report = Vec::new();
    for kernel in ALL {
        let source = kernel.composed_source();
        let line_text = |line: u32| source.lines().nth(line as usize - 1).unwrap_or("").trim();
        for (entry, op) in check(&source).divergent_ops {
            if line_text(op.condition_line) != reviewed {
                report.push(format!(
                    "{}::{entry}: `{}` at {} runs under `{}` at {}",
                    kernel.name,
                    line_text(op.line),
                    file_line(&kernel, op.line),
                    line_text(op.condition_line),
                    file_line(&kernel, op.condition_line),
                ));
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}
