//! The vendored burn-flex patch (vendor/burn-flex/PATCH.md): f32 `exp` and `sigmoid` through a
//! vectorised, parallel kernel. Checked through burn's tensor API, as the model calls them,
//! against f64, on contiguous, shared and strided inputs.

use burn::tensor::activation::sigmoid;
use burn::tensor::{Tensor, TensorData};
use distill_models::device::{Flex, FlexDevice};

fn values(t: Tensor<Flex, 1>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn tensor(v: &[f32]) -> Tensor<Flex, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &FlexDevice)
}

#[test]
fn exp_matches_f64_over_its_range_and_keeps_the_limits() {
    // 2M+1 points over the range where the result is a normal float: several rayon chunks.
    let (lo, hi) = (-86.6f64, 88.72f64);
    let n = 2_000_000;
    let xs: Vec<f32> = (0..=n).map(|i| (lo + (hi - lo) * i as f64 / n as f64) as f32).collect();
    let got = values(tensor(&xs).exp());
    let worst = xs
        .iter()
        .zip(&got)
        .map(|(&x, &e)| {
            let want = (x as f64).exp();
            ((e as f64) - want).abs() / want
        })
        .fold(0.0, f64::max);
    assert!(worst < 2.5e-7, "max relative error {worst}");

    let special = [0.0, f32::NEG_INFINITY, -1000.0, f32::INFINITY, 89.0, 88.7, f32::NAN, 1.0];
    let e = values(tensor(&special).exp());
    assert_eq!(e[0], 1.0);
    assert_eq!((e[1], e[2]), (0.0, 0.0), "masked scores give exactly zero");
    assert_eq!((e[3], e[4]), (f32::INFINITY, f32::INFINITY));
    assert!(e[5].is_finite() && (e[5] as f64 / (88.7f32 as f64).exp() - 1.0).abs() < 2.5e-7);
    assert!(e[6].is_nan());
    assert!((e[7] as f64 - 1f64.exp()).abs() < 1e-6);
}

#[test]
fn sigmoid_matches_f64() {
    let xs: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 5e-4).collect();
    let got = values(sigmoid(tensor(&xs)));
    for (&x, &s) in xs.iter().zip(&got) {
        let want = 1.0 / (1.0 + (-(x as f64)).exp());
        // Below e^-86.6 (2⁻¹²⁵) the patch flushes to zero.
        let flushed = want < 2.5e-38 && s == 0.0;
        assert!(
            ((s as f64) - want).abs() <= 5e-7 * want || flushed,
            "sigmoid({x}) = {s}, want {want}"
        );
    }
    let lim = values(sigmoid(tensor(&[f32::INFINITY, f32::NEG_INFINITY, 0.0])));
    assert_eq!(lim, vec![1.0, 0.0, 0.5]);
}

/// The kernel runs in place only on a tensor that owns its data: a shared input is left as it
/// was, and strided views (a transpose, a slice) give what their contiguous copies give.
#[test]
fn shared_and_strided_inputs_are_left_alone_and_give_the_same_values() {
    let device = FlexDevice;
    let v: Vec<f32> = (0..300 * 257).map(|i| ((i * 7919) % 2001) as f32 / 100.0 - 10.0).collect();
    let a = Tensor::<Flex, 2>::from_data(TensorData::new(v.clone(), [300, 257]), &device);
    let kept = a.clone();
    let e = a.clone().exp();
    assert_eq!(values(kept.clone().reshape([300 * 257])), v, "exp wrote into a shared input");
    let want: Vec<f32> = v.iter().map(|&x| values(tensor(&[x]).exp())[0]).collect();
    assert_eq!(values(e.reshape([300 * 257])), want);

    let t = kept.clone().transpose(); // [257, 300], strided
    let direct = values(t.clone().exp().reshape([300 * 257]));
    let via_copy = values(
        Tensor::<Flex, 2>::from_data(t.clone().into_data(), &device).exp().reshape([300 * 257]),
    );
    assert_eq!(direct, via_copy);
    let s = kept.clone().slice([10..200, 3..250]); // offset view
    let direct = values(sigmoid(s.clone()).reshape([190 * 247]));
    let via_copy =
        values(sigmoid(Tensor::<Flex, 2>::from_data(s.into_data(), &device)).reshape([190 * 247]));
    assert_eq!(direct, via_copy);
    assert_eq!(values(kept.reshape([300 * 257])), v);
}
