/* Guest runs (KVM_RUN of the case's guest programs): memory, page tables, GDT, TSS, segment
 * and control registers exactly as xsave-rig's runner builds them (runner/src/guest/),
 * embedded below; each program is the runner's own assembly of it. */
static unsigned char *gmem;
static struct kvm_run *krun;
static size_t krun_size;
static int guest_ready, sregs_stale = 1;
static struct kvm_sregs gsregs;
static size_t last_code_len;

static void guest_reset(void)
{
    if (krun)
        munmap(krun, krun_size);
    if (gmem)
        munmap(gmem, GUEST_MEM_SIZE);
    krun = NULL;
    gmem = NULL;
    guest_ready = 0;
    sregs_stale = 1;
    last_code_len = 0;
}

static void on_alarm(int sig)
{
    (void)sig;
}

/* The runner's GuestVm::new and CR4 set-up: 0, or the failing ioctl's -errno. */
static long guest_setup(void)
{
    long e;
    int n = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (n <= 0)
        cannot_run("KVM_GET_VCPU_MMAP_SIZE failed");
    krun_size = (size_t)n;
    krun = mmap(NULL, krun_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    gmem = mmap(NULL, GUEST_MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (krun == MAP_FAILED || gmem == MAP_FAILED) {
        krun = NULL;
        gmem = NULL;
        cannot_run("cannot map the vCPU or guest memory");
    }
    struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = GUEST_MEM_SIZE, .userspace_addr = (uintptr_t)gmem};
    if ((e = call(vm, KVM_SET_USER_MEMORY_REGION, &r)))
        return e;
    apply(gmem, guest_tables, NRUNS(guest_tables));
    if ((e = call(vcpu, KVM_GET_SREGS, &gsregs)))
        return e;
    guest_sregs(&gsregs);
    e = -EINVAL;
    for (size_t i = 0; i < NRUNS(cr4_tries) && e == -EINVAL; i++) {
        struct kvm_sregs s = gsregs;
        s.cr4 = cr4_tries[i];
        if (!(e = call(vcpu, KVM_SET_SREGS, &s)))
            gsregs = s;
    }
    if (e)
        return e;
    sregs_stale = 0;
    guest_ready = 1;
    return 0;
}

static double secs(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The runner's GuestVm::run: program and inputs in, output zeroed, RIP/RSP/RFLAGS loaded, KVM_RUN
 * until the end marker, a shutdown, another exit, or the time limit (the thread's CPU time, with
 * a wall-clock backstop). Returns -errno of a failed ioctl, else 0 with *how the run step's
 * value: 0 end, 1 shutdown, 2 internal error / failed entry, 3 timeout, 4 any other exit. */
static MAYBE_UNUSED long guest_run(const struct run *code, size_t ncode, size_t code_len, const unsigned (*in_spans)[2], size_t nspans,
                                   const struct run *in, size_t nin, long *how)
{
    static const unsigned char marker[4] = {GUEST_END_MARKER & 0xff, GUEST_END_MARKER >> 8 & 0xff, GUEST_END_MARKER >> 16 & 0xff,
                                            GUEST_END_MARKER >> 24 & 0xff};
    long e;
    if (!guest_ready && (e = guest_setup()))
        return e;
    for (size_t i = 0; i < nspans; i++)
        memset(gmem + GUEST_INPUT + in_spans[i][0], 0, in_spans[i][1]);
    apply(gmem + GUEST_INPUT, in, nin);
    memset(gmem + GUEST_CODE, 0, code_len > last_code_len ? code_len : last_code_len);
    apply(gmem + GUEST_CODE, code, ncode);
    last_code_len = code_len;
    memset(gmem + GUEST_OUTPUT, 0, GUEST_OUTPUT_SIZE);
    if (sregs_stale) {
        if ((e = call(vcpu, KVM_SET_SREGS, &gsregs)))
            return e;
        sregs_stale = 0;
    }
    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = GUEST_CODE;
    regs.rsp = GUEST_STACK_TOP;
    regs.rflags = 2;
    if ((e = call(vcpu, KVM_SET_REGS, &regs)))
        return e;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm; /* no SA_RESTART: the timer interrupts KVM_RUN */
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval t = {.it_interval = {0, 1000}, .it_value = {GUEST_TIMEOUT_US / 1000000, GUEST_TIMEOUT_US % 1000000}}, off;
    memset(&off, 0, sizeof(off));
    double cpu0 = secs(CLOCK_THREAD_CPUTIME_ID), wall0 = secs(CLOCK_MONOTONIC);
    setitimer(ITIMER_REAL, &t, NULL);
    for (;;) {
        e = call(vcpu, KVM_RUN, NULL);
        if (e == -EINTR) {
            if (secs(CLOCK_THREAD_CPUTIME_ID) - cpu0 >= GUEST_TIMEOUT_US / 1e6 || secs(CLOCK_MONOTONIC) - wall0 >= GUEST_WALL_TIMEOUT_S) {
                *how = 3;
                e = 0;
                break;
            }
            continue;
        }
        if (e < 0)
            break;
        switch (krun->exit_reason) {
        case KVM_EXIT_MMIO:
            *how = krun->mmio.is_write && krun->mmio.phys_addr == GUEST_MMIO_EXIT && krun->mmio.len == 4 && !memcmp(krun->mmio.data, marker, 4) ? 0 : 4;
            break;
        case KVM_EXIT_SHUTDOWN:
            *how = 1;
            break;
        case KVM_EXIT_INTERNAL_ERROR:
        case KVM_EXIT_FAIL_ENTRY:
            *how = 2;
            break;
        default:
            *how = 4;
        }
        e = 0;
        break;
    }
    setitimer(ITIMER_REAL, &off, NULL);
    if (e == 0 && *how != 0)
        sregs_stale = 1;
    return e;
}
