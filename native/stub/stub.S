/*
 * criu-stub: the tiny freestanding process restore starts with the original PID (clone3
 * set_tid) and rebuilds into the dumped task by injected system calls. It does nothing but stop
 * itself and wait; its syscall instructions are the first injection site. No libc, no stack use.
 */
	.text
	.globl _start
_start:
	mov	$39, %eax		/* getpid */
	syscall
	mov	%eax, %edi
	mov	$19, %esi		/* SIGSTOP */
	mov	$62, %eax		/* kill */
	syscall
1:
	mov	$34, %eax		/* pause */
	syscall
	jmp	1b
	.section .note.GNU-stack,"",@progbits
