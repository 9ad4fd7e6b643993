//! Matrix products on raw operands (the `gemm` crate), and the pointer tasks share.

/// `dst = lhs (m × k) @ rhs (k × n)` (+ `dst` when `accumulate`), row strides given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
) {
    assert!(dst.len() >= (m - 1) * dst_rs + n);
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() >= (k - 1) * rhs_rs + n);
    // SAFETY: the asserts bound every index the product touches within the slices.
    unsafe {
        gemm_raw(
            (m, n, k),
            (dst.as_mut_ptr(), dst_rs, accumulate),
            (lhs.as_ptr(), lhs_rs, lhs_cs),
            (rhs.as_ptr(), rhs_rs, 1),
            1.0,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// `dst = lhs (m × k) @ rhs (n × k)ᵀ` (+ `dst` when `accumulate`): `rhs` as rows of `k`
/// (keys, image tokens), read with its strides swapped; row strides given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_nt(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    rhs: &[f32],
    rhs_rs: usize,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n);
    assert!(lhs.len() >= (m - 1) * lhs_rs + k);
    assert!(rhs.len() >= (n - 1) * rhs_rs + k);
    // SAFETY: the asserts bound every index the product touches within the slices.
    unsafe {
        gemm_raw(
            (m, n, k),
            (dst.as_mut_ptr(), dst_rs, accumulate),
            (lhs.as_ptr(), lhs_rs, 1),
            (rhs.as_ptr(), 1, rhs_rs),
            1.0,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// `dst = scale · lhs (m × k) @ rhs (k × n)` (+ `dst` when `accumulate`) on raw operands:
/// `dst` as (pointer, row stride, accumulate), `lhs` and `rhs` as (pointer, row stride,
/// column stride).
///
/// # Safety
/// Every element those strides address lies within its operand's allocation, and no other
/// thread touches `dst`'s elements meanwhile.
pub(crate) unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, accumulate): (*mut f32, usize, bool),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    scale: f32,
    par: gemm::Parallelism,
) {
    // SAFETY: the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// A raw pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: users write disjoint ranges only, and the buffer outlives the tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`, not its field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
