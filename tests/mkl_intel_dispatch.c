/* Loaded with LD_PRELOAD by tests/kernel_matrix.py: MKL asks this function whether the
 * processor is an Intel one, and on other vendors' processors (AMD's included, AVX-512 or
 * not) takes one code path and ignores MKL_ENABLE_INSTRUCTIONS.  Answering yes makes MKL
 * dispatch by the instruction sets the processor has, limited by MKL_ENABLE_INSTRUCTIONS,
 * as it does on Intel processors: so one machine runs the SSE4.2, AVX2 and AVX-512
 * matrix kernels that users' machines pick.  It changes which kernels run, nothing else. */
int mkl_serv_intel_cpu_true(void) { return 1; }
