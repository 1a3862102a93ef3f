/*
 * lockstep-ledger: the ledger service of the Linux guest, in C.
 *
 * It is the assembled ledger guest (machine/src/guests/ledger.rs) as a
 * Linux program: transfers between accounts arrive as UDP datagrams, each
 * is decided (applied, rejected for lack of funds, or invalid), appended
 * to a journal on a block device (or a file), made durable, and only then
 * answered. A request id is decided once: a retried id gets the reply its
 * first decision got, never a second effect. On start it replays the
 * journal, so a service killed at any instant and restarted on the same
 * journal answers as if it had never stopped.
 *
 * Wire format (little-endian), as machine::guests::ledger_load encodes it:
 *   request 32 bytes: id u64 | from u32 | to u32 | amount u64 | 0 u64
 *   reply   24 bytes: id u64 | seq u64 | status u64
 * Journal record seq (from 1), 32 bytes, in 512-byte block (seq-1)/16 at
 * offset ((seq-1)%16)*32:
 *   seq u64 | id u64 | from u16 | to u16 | status u32 | amount u64
 * The journal ends at its first all-zero record.
 *
 * A datagram of another length, with id 0 or an id of TABLE_ENTRIES or
 * more (the assembled guest's reply-table bound), or naming an account
 * beyond 16 bits (which its record could not hold: replaying it would
 * decide differently), is malformed: dropped, counted, not answered.
 *
 * Usage: lockstep-ledger -j JOURNAL -p PORT [-a ACCOUNTS] [-b BALANCE]
 *                        [-l LISTEN_ADDRESS]
 * (16 accounts of 1000 at 0.0.0.0 unless told). Port 0 takes a free port;
 * the first line on stdout names the port bound and the journal records
 * replayed.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define REQUEST_BYTES 32
#define REPLY_BYTES 24
#define RECORD_BYTES 32
#define BLOCK_BYTES 512
#define RECORDS_PER_BLOCK (BLOCK_BYTES / RECORD_BYTES)
#define ACCOUNTS_MAX 512
#define TABLE_ENTRIES (1u << 16)
/* Every id is journaled at most once: the journal's bound. */
#define RECORDS_MAX (TABLE_ENTRIES - 1)

#define STATUS_APPLIED 1
#define STATUS_REJECTED 2
#define STATUS_INVALID 3

struct decision {
	uint64_t seq; /* 0: not decided */
	uint32_t status;
};

struct record {
	uint64_t seq;
	uint64_t id;
	uint16_t from;
	uint16_t to;
	uint32_t status;
	uint64_t amount;
};

struct ledger {
	int journal_fd;
	uint64_t accounts;
	uint64_t balances[ACCOUNTS_MAX];
	struct decision table[TABLE_ENTRIES];
	uint64_t records; /* journal records written */
	unsigned char block[BLOCK_BYTES]; /* the journal's last block */
	uint64_t malformed;
};

static struct ledger ledger;

static void put_u16(unsigned char *p, uint16_t v)
{
	p[0] = v;
	p[1] = v >> 8;
}

static void put_u32(unsigned char *p, uint32_t v)
{
	put_u16(p, v);
	put_u16(p + 2, v >> 16);
}

static void put_u64(unsigned char *p, uint64_t v)
{
	put_u32(p, v);
	put_u32(p + 4, v >> 32);
}

static uint64_t get_u64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint32_t get_u32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint16_t get_u16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static void die(const char *what)
{
	fprintf(stderr, "lockstep-ledger: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void fail(const char *message, uint64_t at)
{
	fprintf(stderr, "lockstep-ledger: %s (journal record %llu)\n", message,
		(unsigned long long)at);
	exit(1);
}

/* The decision the ledger makes for a new transfer. */
static uint32_t decide(uint64_t from, uint64_t to, uint64_t amount)
{
	if (from >= ledger.accounts || to >= ledger.accounts)
		return STATUS_INVALID;
	if (ledger.balances[from] < amount)
		return STATUS_REJECTED;
	return STATUS_APPLIED;
}

static void apply(const struct record *r)
{
	if (r->status == STATUS_APPLIED) {
		ledger.balances[r->from] -= r->amount;
		ledger.balances[r->to] += r->amount;
	}
	ledger.table[r->id].seq = r->seq;
	ledger.table[r->id].status = r->status;
	ledger.records = r->seq;
}

static void read_fully(uint64_t block, unsigned char *out)
{
	ssize_t n = pread(ledger.journal_fd, out, BLOCK_BYTES,
			  (off_t)(block * BLOCK_BYTES));
	if (n < 0)
		die("reading the journal");
	/* Past the end of a file: the journal ends there. */
	memset(out + n, 0, BLOCK_BYTES - (size_t)n);
}

static void decode_record(const unsigned char *p, struct record *r)
{
	r->seq = get_u64(p);
	r->id = get_u64(p + 8);
	r->from = get_u16(p + 16);
	r->to = get_u16(p + 18);
	r->status = get_u32(p + 20);
	r->amount = get_u64(p + 24);
}

static int all_zero(const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return 0;
	return 1;
}

/*
 * Replays the journal: every record must follow its predecessor, name an
 * id not seen before, and hold the decision the ledger would make.
 * Anything else is a corrupt journal, and the service refuses to start.
 */
static void replay_journal(void)
{
	for (uint64_t k = 0; k < RECORDS_MAX; k++) {
		const unsigned char *p;
		struct record r;
		if (k % RECORDS_PER_BLOCK == 0)
			read_fully(k / RECORDS_PER_BLOCK, ledger.block);
		p = ledger.block + (k % RECORDS_PER_BLOCK) * RECORD_BYTES;
		if (all_zero(p, RECORD_BYTES))
			return;
		decode_record(p, &r);
		if (r.seq != k + 1)
			fail("a record out of sequence", k);
		if (r.id == 0 || r.id >= TABLE_ENTRIES || ledger.table[r.id].seq)
			fail("a record of an impossible or repeated id", k);
		if (r.status != decide(r.from, r.to, r.amount))
			fail("a record whose decision the ledger would not make", k);
		apply(&r);
	}
}

/* Appends `r` to the journal and makes it durable. */
static void journal_append(const struct record *r)
{
	uint64_t k = r->seq - 1;
	unsigned char *p = ledger.block + (k % RECORDS_PER_BLOCK) * RECORD_BYTES;
	if (k % RECORDS_PER_BLOCK == 0)
		memset(ledger.block, 0, BLOCK_BYTES);
	put_u64(p, r->seq);
	put_u64(p + 8, r->id);
	put_u16(p + 16, r->from);
	put_u16(p + 18, r->to);
	put_u32(p + 20, r->status);
	put_u64(p + 24, r->amount);
	if (pwrite(ledger.journal_fd, ledger.block, BLOCK_BYTES,
		   (off_t)(k / RECORDS_PER_BLOCK * BLOCK_BYTES)) != BLOCK_BYTES)
		die("writing the journal");
	if (fdatasync(ledger.journal_fd) != 0)
		die("syncing the journal");
}

/*
 * The reply to one datagram, into `reply`: 1 to send it, 0 for a
 * malformed datagram.
 */
static int serve(const unsigned char *req, ssize_t len, unsigned char *reply)
{
	uint64_t id, from, to, amount;
	struct decision *d;
	if (len != REQUEST_BYTES)
		return 0;
	id = get_u64(req);
	from = get_u32(req + 8);
	to = get_u32(req + 12);
	amount = get_u64(req + 16);
	if (id == 0 || id >= TABLE_ENTRIES || from > UINT16_MAX || to > UINT16_MAX)
		return 0;
	d = &ledger.table[id];
	if (!d->seq) {
		struct record r = {
			.seq = ledger.records + 1,
			.id = id,
			.from = (uint16_t)from,
			.to = (uint16_t)to,
			.status = decide(from, to, amount),
			.amount = amount,
		};
		journal_append(&r);
		apply(&r);
	}
	put_u64(reply, id);
	put_u64(reply + 8, d->seq);
	put_u64(reply + 16, d->status);
	return 1;
}

static uint64_t number(const char *arg, const char *name, uint64_t max)
{
	char *end;
	unsigned long long v;
	errno = 0;
	v = strtoull(arg, &end, 0);
	if (errno || *end || end == arg || v > max) {
		fprintf(stderr, "lockstep-ledger: bad %s '%s'\n", name, arg);
		exit(2);
	}
	return v;
}

/* A UDP socket bound to `address`:`port`; the port bound into *bound. */
static int bind_udp(const char *address, uint16_t port, uint16_t *bound)
{
	socklen_t len = sizeof(struct sockaddr_in);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket");
	if (inet_pton(AF_INET, address, &sa.sin_addr) != 1) {
		fprintf(stderr, "lockstep-ledger: bad address '%s'\n", address);
		exit(2);
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
		die("bind");
	if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
		die("getsockname");
	*bound = ntohs(sa.sin_port);
	return fd;
}

int main(int argc, char **argv)
{
	const char *journal = NULL, *address = "0.0.0.0";
	uint64_t port = UINT64_MAX, initial_balance = 1000;
	uint16_t bound;
	int opt, fd;
	ledger.accounts = 16;
	while ((opt = getopt(argc, argv, "j:p:a:b:l:")) != -1) {
		switch (opt) {
		case 'j': journal = optarg; break;
		case 'p': port = number(optarg, "port", 65535); break;
		case 'a': ledger.accounts = number(optarg, "accounts", ACCOUNTS_MAX); break;
		case 'b': initial_balance = number(optarg, "balance", UINT32_MAX); break;
		case 'l': address = optarg; break;
		default: goto usage;
		}
	}
	if (!journal || port == UINT64_MAX || optind != argc)
		goto usage;
	for (uint64_t a = 0; a < ledger.accounts; a++)
		ledger.balances[a] = initial_balance;
	ledger.journal_fd = open(journal, O_RDWR | O_CREAT, 0644);
	if (ledger.journal_fd < 0)
		die(journal);
	replay_journal();
	fd = bind_udp(address, (uint16_t)port, &bound);
	printf("lockstep-ledger: serving %llu accounts on %s:%u, %llu journal records\n",
	       (unsigned long long)ledger.accounts, address, bound,
	       (unsigned long long)ledger.records);
	fflush(stdout);
	for (;;) {
		unsigned char req[REQUEST_BYTES + 1], reply[REPLY_BYTES];
		struct sockaddr_storage from;
		socklen_t from_len = sizeof from;
		ssize_t n = recvfrom(fd, req, sizeof req, 0,
				     (struct sockaddr *)&from, &from_len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("recvfrom");
		}
		if (!serve(req, n, reply)) {
			ledger.malformed++;
			continue;
		}
		if (sendto(fd, reply, sizeof reply, 0, (struct sockaddr *)&from,
			   from_len) != (ssize_t)sizeof reply)
			perror("lockstep-ledger: sendto");
	}
usage:
	fprintf(stderr, "usage: lockstep-ledger -j JOURNAL -p PORT [-a ACCOUNTS] "
			"[-b BALANCE] [-l LISTEN_ADDRESS]\n");
	return 2;
}
