//! Every shader is parsed and validated with naga and translated to SPIR-V, MSL, HLSL and
//! GLSL, so that the Vulkan, Metal, DX12 and GL compiles are checked on Linux; the WGSL
//! `Params` is reflected against the Rust struct.

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::ShaderStage;

use super::{ALL, UNIFORM_PARAMS};

/// `source` of `kernel` parsed and validated with naga. The portable kernels need no optional
/// feature beyond `extra`: only pack/unpack2x16float, which core WebGPU guarantees (wgpu's
/// downlevel flag SHADER_F16_IN_F32). Fast paths declare the subgroup or shader-f16 feature
/// they need, and only that.
fn validated(
    kernel: &super::Kernel,
    source: &str,
    extra: Capabilities,
) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{}: {}", kernel.name, e.emit_to_string(source)));
    let mut capabilities = Capabilities::SHADER_FLOAT16_IN_FLOAT32 | extra;
    if kernel.needs_subgroups {
        capabilities |= Capabilities::SUBGROUP;
    }
    if kernel.needs_f16 {
        capabilities |= Capabilities::SHADER_FLOAT16;
    }
    let info = Validator::new(ValidationFlags::all(), capabilities)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", kernel.name, e.emit_to_string(source)));
    (module, info)
}

/// Every kernel declares its parameter block with the one line that immediates replace, and
/// that composition validates and translates to SPIR-V (Vulkan's push constants; Metal and
/// DX12 take immediates the same way through wgpu).
#[test]
fn every_shader_takes_its_parameters_as_immediates() {
    for kernel in ALL {
        let declarations = kernel.composed_source().matches(UNIFORM_PARAMS).count();
        assert_eq!(
            declarations, 1,
            "{}: parameter block declarations",
            kernel.name
        );
        let (module, info) = validated(
            &kernel,
            &kernel.composed_source_with_immediates(),
            Capabilities::IMMEDIATES,
        );
        for entry in kernel.entry_points {
            let options = spv::Options {
                lang_version: (1, 3),
                ..Default::default()
            };
            spv::write_vec(
                &module,
                &info,
                &options,
                Some(&spv::PipelineOptions {
                    shader_stage: ShaderStage::Compute,
                    entry_point: entry.to_string(),
                }),
            )
            .unwrap_or_else(|e| panic!("{}::{entry} SPIR-V with immediates: {e}", kernel.name));
        }
    }
}

#[test]
fn every_shader_validates_and_translates_to_every_backend() {
    for kernel in ALL {
        let (module, info) = validated(&kernel, &kernel.composed_source(), Capabilities::empty());
        let declared: Vec<&str> = module
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            declared, kernel.entry_points,
            "{}: entry points",
            kernel.name
        );

        for entry in kernel.entry_points {
            // Subgroup operations need SPIR-V 1.3, MSL 2.1 and shader model 6.0.
            let spv_options = spv::Options {
                lang_version: if kernel.needs_subgroups {
                    (1, 3)
                } else {
                    (1, 0)
                },
                ..Default::default()
            };
            let spirv = spv::write_vec(
                &module,
                &info,
                &spv_options,
                Some(&spv::PipelineOptions {
                    shader_stage: ShaderStage::Compute,
                    entry_point: entry.to_string(),
                }),
            )
            .unwrap_or_else(|e| panic!("{}::{entry} SPIR-V: {e}", kernel.name));
            assert_eq!(spirv[0], 0x0723_0203, "SPIR-V magic");

            let msl_options = msl::Options {
                lang_version: if kernel.needs_subgroups {
                    (2, 1)
                } else {
                    (1, 0)
                },
                ..Default::default()
            };
            msl::write_string(
                &module,
                &info,
                &msl_options,
                &msl::PipelineOptions {
                    entry_point: Some((ShaderStage::Compute, entry.to_string())),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{}::{entry} MSL: {e}", kernel.name));

            // f16 needs shader model 6.2 (and DXC).
            let hlsl_options = hlsl::Options {
                shader_model: if kernel.needs_f16 {
                    hlsl::ShaderModel::V6_2
                } else if kernel.needs_subgroups {
                    hlsl::ShaderModel::V6_0
                } else {
                    hlsl::Options::default().shader_model
                },
                ..Default::default()
            };
            let hlsl_pipeline = hlsl::PipelineOptions {
                entry_point: Some((ShaderStage::Compute, entry.to_string())),
            };
            let mut hlsl_out = String::new();
            hlsl::Writer::new(&mut hlsl_out, &hlsl_options, &hlsl_pipeline)
                .write(&module, &info, None)
                .unwrap_or_else(|e| panic!("{}::{entry} HLSL: {e}", kernel.name));

            // wgpu's GL backend offers neither subgroups nor f16, so the fast paths never
            // run on GL.
            if kernel.needs_subgroups || kernel.needs_f16 {
                continue;
            }
            let glsl_options = glsl::Options {
                version: glsl::Version::new_gles(310),
                ..Default::default()
            };
            let glsl_pipeline = glsl::PipelineOptions {
                shader_stage: ShaderStage::Compute,
                entry_point: entry.to_string(),
                multiview: None,
            };
            let mut glsl_out = String::new();
            glsl::Writer::new(
                &mut glsl_out,
                &module,
                &info,
                &glsl_options,
                &glsl_pipeline,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .and_then(|mut w| w.write())
            .unwrap_or_else(|e| panic!("{}::{entry} GLSL: {e}", kernel.name));
            assert!(glsl_out.contains("void main"));
        }
    }
}

/// `Params` in `shaders/common.wgsl`, reflected with naga, has the Rust struct's members
/// at the Rust struct's offsets, and the same size.
#[test]
fn wgsl_params_match_the_rust_struct() {
    use crate::gpu::params::Params;
    use std::mem::{offset_of, size_of};
    let rust = [
        ("width", offset_of!(Params, width)),
        ("rows", offset_of!(Params, rows)),
        ("len", offset_of!(Params, len)),
        ("group_size", offset_of!(Params, group_size)),
        ("groups", offset_of!(Params, groups)),
        ("group_offset", offset_of!(Params, group_offset)),
        ("group_count", offset_of!(Params, group_count)),
        ("row_offset", offset_of!(Params, row_offset)),
        ("invocations", offset_of!(Params, invocations)),
        ("gamma", offset_of!(Params, gamma)),
        ("scale_rule", offset_of!(Params, scale_rule)),
        ("dft_len", offset_of!(Params, dft_len)),
        ("outliers", offset_of!(Params, outliers)),
        ("blocks", offset_of!(Params, blocks)),
        ("block_tokens", offset_of!(Params, block_tokens)),
        ("block_offset", offset_of!(Params, block_offset)),
        ("kv_heads", offset_of!(Params, kv_heads)),
        ("rows_per_head", offset_of!(Params, rows_per_head)),
        ("queries", offset_of!(Params, queries)),
        ("tile_rows", offset_of!(Params, tile_rows)),
        ("segment_start", offset_of!(Params, segment_start)),
        ("segment_len", offset_of!(Params, segment_len)),
        ("split_offset", offset_of!(Params, split_offset)),
        ("split_size", offset_of!(Params, split_size)),
        ("total_splits", offset_of!(Params, total_splits)),
        ("segment_first", offset_of!(Params, segment_first)),
        ("stp", offset_of!(Params, stp)),
        ("scale", offset_of!(Params, scale)),
        ("code_bits", offset_of!(Params, code_bits)),
        ("centre_rows", offset_of!(Params, centre_rows)),
        ("value_code_bits", offset_of!(Params, value_code_bits)),
        ("stats_offset", offset_of!(Params, stats_offset)),
    ];
    let source = ALL[0].composed_source();
    let module = naga::front::wgsl::parse_str(&source).unwrap();
    let (members, span) = module
        .types
        .iter()
        .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
            (Some(name), naga::TypeInner::Struct { members, span }) if name == "Params" => {
                Some((members.clone(), *span))
            }
            _ => None,
        })
        .expect("common.wgsl declares Params");
    let wgsl: Vec<(String, usize)> = members
        .iter()
        .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
        .collect();
    let expected: Vec<(String, usize)> = rust.iter().map(|&(n, o)| (n.to_string(), o)).collect();
    assert_eq!(wgsl, expected);
    assert_eq!(span as usize, size_of::<Params>());
    assert_eq!(size_of::<Params>() % 16, 0);
}

/// The level-mux constants of the fused split-groups kernel, read back with naga, are the
/// Lloyd-Max levels of the CPU reference: leaf k of width b is the level of code
/// 2^b − 1 − (k mod 2^(b−1)).
#[test]
fn split_groups_level_mux_matches_the_codebooks() {
    use crate::reference::lloyd_max::Codebook;
    let source = super::ATTENTION_SPLIT_GROUPS.composed_source();
    let module = naga::front::wgsl::parse_str(&source).unwrap();
    for bits in 1..=4u8 {
        let name = format!("MUX_LEAVES_{bits}");
        let (_, constant) = module
            .constants
            .iter()
            .find(|(_, c)| c.name.as_deref() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not declared"));
        let naga::Expression::Compose { ref components, .. } =
            module.global_expressions[constant.init]
        else {
            panic!("{name} is not an array constructor");
        };
        let leaves: Vec<f32> = components
            .iter()
            .map(|&e| match module.global_expressions[e] {
                naga::Expression::Literal(naga::Literal::F32(x)) => x,
                ref other => panic!("{name}: {other:?} is not an f32 literal"),
            })
            .collect();
        let levels = Codebook::new(bits).unwrap().levels;
        let half = 1usize << (bits - 1);
        let expected: Vec<f32> = (0..8).map(|k| levels[2 * half - 1 - k % half]).collect();
        assert_eq!(leaves, expected, "{name}");
        for (c, level) in levels.iter().enumerate() {
            assert_eq!(
                *level,
                -levels[levels.len() - 1 - c],
                "{bits}-bit levels are symmetric"
            );
        }
    }
}

/// Storage buffers each entry point binds (naga's analysis of the composed module): at most
/// [`STORAGE_BUFFERS_PER_STAGE`], Chrome's limit, for every kernel (the fused decode kernel
/// binds exactly that many).
#[test]
fn storage_buffers_per_entry_point_fit_the_limits() {
    use crate::gpu::context::STORAGE_BUFFERS_PER_STAGE;
    let mut most = 0;
    for kernel in ALL {
        let source = kernel.composed_source();
        let (module, info) = validated(&kernel, &source, Capabilities::empty());
        for (index, entry) in module.entry_points.iter().enumerate() {
            let uses = info.get_entry_point(index);
            let storage = module
                .global_variables
                .iter()
                .filter(|(handle, var)| {
                    !uses[*handle].is_empty()
                        && matches!(var.space, naga::AddressSpace::Storage { .. })
                })
                .count() as u32;
            let name = format!("{}::{} ({storage})", kernel.name, entry.name);
            assert!(storage <= STORAGE_BUFFERS_PER_STAGE, "{name}");
            most = most.max(storage);
        }
    }
    assert_eq!(most, STORAGE_BUFFERS_PER_STAGE);
}
