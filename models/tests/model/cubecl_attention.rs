//! The training attention op (`attention::causal` under autodiff) on the cubecl device (burn-wgpu
//! on lavapipe, with burn-fusion), against the same op on CPU flex: values and q/k/v gradients in
//! f32, causal and packed-document masks, at sequence lengths that are and are not multiples of 16.
//! Skipped (saying so) without the `wgpu` feature; required under scripts/test.

#[cfg(feature = "wgpu")]
mod on_wgpu {
    use burn::prelude::*;
    use burn::tensor::{Distribution, TensorData};
    use distill_models::attention::causal;
    use distill_models::device::{Autodiff, Flex, FlexDevice, Wgpu, WgpuDevice};

    /// Output, dq, dk, dv of `sum(causal(q, k, v, mask) * w)` on backend `B`.
    fn run<B: Backend>(
        inputs: &[TensorData; 4],
        mask: Option<&TensorData>,
        dev: &B::Device,
    ) -> Vec<Vec<f32>> {
        type A<B> = Autodiff<B>;
        let t = |d: &TensorData| Tensor::<A<B>, 4>::from_data(d.clone(), dev);
        let (q, k, v, w) = (
            t(&inputs[0]).require_grad(),
            t(&inputs[1]).require_grad(),
            t(&inputs[2]).require_grad(),
            t(&inputs[3]),
        );
        let mask = mask.map(|m| Tensor::<A<B>, 4, Bool>::from_data(m.clone(), dev));
        let out = causal(q.clone(), k.clone(), v.clone(), mask);
        let grads = (out.clone() * w).sum().backward();
        let flat = |x: Tensor<B, 4>| x.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        vec![
            flat(out.inner()),
            flat(q.grad(&grads).unwrap()),
            flat(k.grad(&grads).unwrap()),
            flat(v.grad(&grads).unwrap()),
        ]
    }

    fn check(b: usize, h: usize, t: usize, d: usize, packed: bool) {
        distill_models::kernels::install();
        let dev = FlexDevice;
        let r = |_| {
            Tensor::<Flex, 4>::random([b, h, t, d], Distribution::Normal(0.0, 1.5), &dev)
                .into_data()
        };
        let inputs = [r(0), r(1), r(2), r(3)];
        // Packed: row 0 holds documents [0, t/3) and [t/3, t); row 1 has 5 left-padding tokens.
        let mask = packed.then(|| {
            let mut m = vec![false; b * t * t];
            for row in 0..b {
                for q in 0..t {
                    for k in 0..t {
                        m[row * t * t + q * t + k] = k > q
                            || (row % 2 == 0 && q >= t / 3 && k < t / 3)
                            || (row % 2 == 1 && k < 5);
                    }
                }
            }
            TensorData::new(m, [b, 1, t, t])
        });
        let cpu = run::<Flex>(&inputs, mask.as_ref(), &dev);
        let gpu = run::<Wgpu>(&inputs, mask.as_ref(), &WgpuDevice::DefaultDevice);
        for (name, (a, e)) in ["out", "dq", "dk", "dv"].iter().zip(gpu.iter().zip(&cpu)) {
            let err = a.iter().zip(e).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(err < 1e-4, "t {t} packed {packed}: {name} max error {err}");
        }
    }

    #[test]
    fn training_attention_matches_flex_at_16_multiples() {
        check(2, 4, 48, 16, false);
        check(2, 4, 48, 16, true);
    }

    #[test]
    fn training_attention_matches_flex_at_other_lengths() {
        check(2, 4, 40, 16, false);
        check(2, 4, 37, 16, true);
    }
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn training_attention_on_the_cubecl_device() {
    assert!(
        std::env::var("DISTILL_REQUIRE_WGPU").as_deref() != Ok("1"),
        "DISTILL_REQUIRE_WGPU=1 but distill-models was built without the `wgpu` feature"
    );
    eprintln!("SKIPPED: built without the `wgpu` feature");
}
