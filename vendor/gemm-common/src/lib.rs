#![cfg_attr(not(feature = "std"), no_std)]

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

#[cfg(feature = "wasm-simd128-enable")]
pub const DEFAULT_WASM_SIMD128: bool = true;

#[cfg(not(feature = "wasm-simd128-enable"))]
pub const DEFAULT_WASM_SIMD128: bool = false;

static WASM_SIMD128: AtomicBool = AtomicBool::new(DEFAULT_WASM_SIMD128);

#[inline]
pub fn get_wasm_simd128() -> bool {
    WASM_SIMD128.load(Relaxed)
}
#[inline]
pub fn set_wasm_simd128(enable: bool) {
    WASM_SIMD128.store(enable, Relaxed)
}

extern crate alloc;

pub mod cache;

/// distill's patch (see vendor/gemm-common/PATCH.md): which x86 kernel family `init_gemm_fn`
/// takes, chosen at run time instead of by `avx512f` detection alone.
pub mod x86_kernel {
    use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

    /// Take the AVX-512 kernels when the CPU has `avx512f` (gemm's own rule).
    pub const AUTO: u8 = 0;
    /// Take the AVX2+FMA kernels even when the CPU has AVX-512.
    pub const AVX2: u8 = 1;

    /// What `init_gemm_fn` took last: nothing yet, scalar, AVX2+FMA, AVX-512.
    pub const TOOK_NONE: u8 = 0;
    pub const TOOK_SCALAR: u8 = 1;
    pub const TOOK_AVX2: u8 = 2;
    pub const TOOK_AVX512: u8 = 3;

    static PREFERENCE: AtomicU8 = AtomicU8::new(AUTO);
    static GENERATION: AtomicUsize = AtomicUsize::new(0);
    static TOOK: AtomicU8 = AtomicU8::new(TOOK_NONE);

    /// Sets the preference; every element type's cached kernel is chosen again at its next call.
    pub fn set_preference(preference: u8) {
        PREFERENCE.store(preference, Relaxed);
        GENERATION.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn preference() -> u8 {
        PREFERENCE.load(Relaxed)
    }

    #[inline(always)]
    pub fn generation() -> usize {
        GENERATION.load(Relaxed)
    }

    /// The kernel family the last (re)initialised dispatch took.
    pub fn last_taken() -> u8 {
        TOOK.load(Relaxed)
    }

    #[doc(hidden)]
    pub fn record(took: u8) {
        TOOK.store(took, Relaxed);
    }
}

pub mod gemm;
pub mod gemv;
pub mod gevv;

pub mod horizontal_microkernel;
pub mod microkernel;

pub mod pack_operands;
pub mod simd;

pub use pulp;

#[derive(Copy, Clone, Debug)]
pub enum Parallelism {
    None,
    #[cfg(feature = "rayon")]
    Rayon(usize),
}

pub struct Ptr<T: ?Sized>(pub *mut T);

impl<T: ?Sized> Clone for Ptr<T> {
    #[inline]
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for Ptr<T> {}

unsafe impl<T: ?Sized> Send for Ptr<T> {}
unsafe impl<T: ?Sized> Sync for Ptr<T> {}

impl<T> Ptr<T> {
    #[inline(always)]
    pub fn wrapping_offset(self, offset: isize) -> Self {
        Ptr::<T>(self.0.wrapping_offset(offset))
    }
    #[inline(always)]
    pub fn wrapping_add(self, offset: usize) -> Self {
        Ptr::<T>(self.0.wrapping_add(offset))
    }
}

#[cfg(not(feature = "std"))]
#[macro_export]
macro_rules! feature_detected {
    ($tt: tt) => {
        cfg!(feature = $tt)
    };
}

#[cfg(all(feature = "std", any(target_arch = "x86", target_arch = "x86_64")))]
#[macro_export]
macro_rules! feature_detected {
    ($tt: tt) => {
        ::std::arch::is_x86_feature_detected!($tt)
    };
}
#[cfg(all(feature = "std", target_arch = "aarch64"))]
#[macro_export]
macro_rules! feature_detected {
    ($tt: tt) => {
        ::std::arch::is_aarch64_feature_detected!($tt)
    };
}
#[cfg(all(feature = "std", target_family = "wasm"))]
#[macro_export]
macro_rules! feature_detected {
    ("simd128") => {
        $crate::get_wasm_simd128()
    };
}
