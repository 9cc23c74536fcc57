/*
 * noid-agent: the guest side of exec. Serves length-prefixed frames on a virtio-serial
 * port (never the serial console, which carries the kernel log and is not 8-bit clean).
 *
 * Frame (all integers big-endian): u32 len (of what follows), u8 type, u32 request id, payload.
 *   host -> guest  'P' ping                       -> 'P' pong, payload: version string
 *                  'X' exec: u32 timeout_ms, u32 argc, argc x (u32 n, n bytes),
 *                            u32 envc, envc x (u32 n, n bytes "K=V")
 *                                                  -> 'O'/'E' output chunks, then 'R': i32 exit, u8 timed_out
 *                  'S' shutdown                    -> 'S', then sync and power off
 * One request at a time; the host serialises. When the host side disconnects, the port
 * reads EOF (or POLLHUP) until it reconnects: the agent drops any half frame and waits.
 *
 * Commands get a clean environment (PATH plus what the request carries), stdin /dev/null,
 * their own session (so a timeout kills the whole process group).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define VERSION "noid-agent 1"
#define PORT_NAME "org.noid.agent"
#define MAX_FRAME (4u << 20)
#define MAX_ITEMS 4096

static int port = -1;

static void logmsg(const char *m) {
  /* /dev/console is the serial log: where a failing agent leaves its reason. */
  int fd = open("/dev/console", O_WRONLY | O_NOCTTY);
  if (fd < 0) return;
  dprintf(fd, "noid-agent: %s\n", m);
  close(fd);
}

/* The port's device node is /dev/vportNpM; its name is in sysfs. */
static int open_port(void) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (!d) return -1;
  struct dirent *e;
  int fd = -1;
  while ((e = readdir(d)) != NULL && fd < 0) {
    if (e->d_name[0] == '.') continue;
    char path[512], name[128] = {0};
    snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
    int nf = open(path, O_RDONLY);
    if (nf < 0) continue;
    ssize_t n = read(nf, name, sizeof name - 1);
    close(nf);
    if (n <= 0) continue;
    name[strcspn(name, "\n")] = 0;
    if (strcmp(name, PORT_NAME) != 0) continue;
    snprintf(path, sizeof path, "/dev/%s", e->d_name);
    fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
  }
  closedir(d);
  return fd;
}

static int write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { usleep(1000); continue; }
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void put32(unsigned char *p, uint32_t v) {
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static uint32_t get32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void send_frame(char type, uint32_t id, const void *payload, uint32_t n) {
  /* One write per frame: a host that connects between two writes would see half a frame. */
  static unsigned char out[9 + 65536];
  if (n > sizeof out - 9) n = sizeof out - 9;
  put32(out, n + 5);
  out[4] = (unsigned char)type;
  put32(out + 5, id);
  if (n > 0) memcpy(out + 9, payload, n);
  /* A vanished host is not an error here: the next request starts afresh. */
  write_all(port, out, 9 + n);
}

/* Bytes wait_readable() took while waiting; read_exact() hands them out first. */
static unsigned char held[4096];
static size_t held_len, held_off;

/* Reads exactly n bytes; 0 on success, -1 on EOF/hangup (host went away). */
static int read_exact(unsigned char *buf, size_t n) {
  while (n > 0 && held_off < held_len) {
    *buf++ = held[held_off++];
    n--;
  }
  while (n > 0) {
    ssize_t r = read(port, buf, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    buf += r;
    n -= (size_t)r;
  }
  return 0;
}

/*
 * Blocks until the host has sent something. While no host is connected the port reports
 * POLLHUP and POLLIN together (a read would see EOF), so poll returns at once: sleep.
 * (Returning on POLLIN alone kept the agent spinning, a whole vCPU, whenever no host was
 * connected: between requests, that is nearly always.) The guest learns of connections
 * from control messages that can come late, so while POLLHUP lasts a read is tried every
 * 200 ms: bytes that arrived before their connection's open event are not left waiting.
 */
static void wait_readable(void) {
  for (int slept = 0;; slept++) {
    if (held_off < held_len) return;
    struct pollfd p = {.fd = port, .events = POLLIN};
    int r = poll(&p, 1, -1);
    if (r > 0 && (p.revents & POLLIN) && !(p.revents & POLLHUP)) return;
    if (r > 0 && (p.revents & POLLIN) && slept % 4 == 3) {
      ssize_t n = read(port, held, sizeof held);
      if (n > 0) {
        held_len = (size_t)n;
        held_off = 0;
        return;
      }
    }
    usleep(50 * 1000);
  }
}

/* Drops the bytes the port holds now, without waiting for more (lost framing). */
static void discard_pending(void) {
  static unsigned char junk[65536];
  held_off = held_len = 0;
  for (;;) {
    struct pollfd p = {.fd = port, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN)) return;
    ssize_t n = read(port, junk, sizeof junk);
    if (n <= 0) return;
  }
}

struct cursor { const unsigned char *p; uint32_t left; };

static int take32(struct cursor *c, uint32_t *v) {
  if (c->left < 4) return -1;
  *v = get32(c->p);
  c->p += 4; c->left -= 4;
  return 0;
}

/* A NUL-terminated copy of the next length-prefixed string. */
static char *take_str(struct cursor *c) {
  uint32_t n;
  if (take32(c, &n) || n > c->left) return NULL;
  char *s = malloc(n + 1);
  if (!s) return NULL;
  memcpy(s, c->p, n);
  s[n] = 0;
  c->p += n; c->left -= n;
  return s;
}

static char **take_list(struct cursor *c, uint32_t *count) {
  if (take32(c, count) || *count > MAX_ITEMS) return NULL;
  char **v = calloc(*count + 1, sizeof *v);
  if (!v) return NULL;
  for (uint32_t i = 0; i < *count; i++)
    if (!(v[i] = take_str(c))) return NULL; /* leaks on a malformed frame; the agent is long-lived but frames are trusted-shaped */
  return v;
}

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void send_result(uint32_t id, int32_t code, int timed_out) {
  unsigned char r[5];
  put32(r, (uint32_t)code);
  r[4] = (unsigned char)(timed_out ? 1 : 0);
  send_frame('R', id, r, sizeof r);
}

static void do_exec(uint32_t id, struct cursor *c) {
  uint32_t timeout_ms, argc, envc;
  char **argv, **env;
  if (take32(c, &timeout_ms) || !(argv = take_list(c, &argc)) || argc == 0 || !(env = take_list(c, &envc))) {
    const char *m = "noid-agent: malformed exec request\n";
    send_frame('E', id, m, strlen(m));
    send_result(id, 125, 0);
    return;
  }
  /* A clean environment: PATH first, so a request may override it. */
  char **cenv = calloc(envc + 2, sizeof *cenv);
  cenv[0] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  for (uint32_t i = 0; i < envc; i++) cenv[i + 1] = env[i];

  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
    const char *m = "noid-agent: pipe failed\n";
    send_frame('E', id, m, strlen(m));
    send_result(id, 126, 0);
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {
    setsid();
    int nul = open("/dev/null", O_RDONLY);
    dup2(nul, 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    signal(SIGPIPE, SIG_DFL);
    environ = cenv;
    execvp(argv[0], argv);
    dprintf(2, "%s: %s\n", argv[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
  }
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    const char *m = "noid-agent: fork failed\n";
    send_frame('E', id, m, strlen(m));
    send_result(id, 126, 0);
    close(out[0]); close(err[0]);
    return;
  }
  int64_t deadline = timeout_ms ? now_ms() + timeout_ms : 0;
  int timed_out = 0, open_fds = 2;
  struct pollfd p[2] = {{.fd = out[0], .events = POLLIN}, {.fd = err[0], .events = POLLIN}};
  static unsigned char buf[65536];
  while (open_fds > 0) {
    int wait = -1;
    if (deadline) {
      int64_t left = deadline - now_ms();
      if (left <= 0) {
        /* The whole session: a shell's children hold the pipes open too. */
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        timed_out = 1;
        break;
      }
      wait = (int)left;
    }
    int r = poll(p, 2, wait);
    if (r < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; i++) {
      if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(p[i].fd, buf, sizeof buf);
      if (n > 0) {
        send_frame(i == 0 ? 'O' : 'E', id, buf, (uint32_t)n);
      } else if (n == 0 || errno != EINTR) {
        close(p[i].fd);
        p[i].fd = -1;
        open_fds--;
      }
    }
  }
  for (int i = 0; i < 2; i++) if (p[i].fd >= 0) close(p[i].fd);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  int32_t code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  send_result(id, timed_out ? -1 : code, timed_out);
  for (uint32_t i = 0; i < argc; i++) free(argv[i]);
  /* Environment values may be secrets: wiped, not just freed (a checkpoint saves this memory). */
  for (uint32_t i = 0; i < envc; i++) { explicit_bzero(env[i], strlen(env[i])); free(env[i]); }
  free(argv); free(env); free(cenv);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  for (int tries = 0; (port = open_port()) < 0; tries++) {
    if (tries == 100) logmsg("waiting for virtio port " PORT_NAME);
    usleep(100 * 1000);
  }
  logmsg("ready");
  unsigned char *frame = malloc(MAX_FRAME);
  for (;;) {
    wait_readable();
    unsigned char hdr[4];
    if (read_exact(hdr, 4)) continue; /* host went away mid-frame: drop it */
    uint32_t len = get32(hdr);
    if (len < 5 || len > MAX_FRAME) {
      /* Lost framing (the rest of a frame cut short): drop what is there now. Reading on 4
         bytes every 200 ms took hours through the rest of a 1 MiB ping, the agent deaf. */
      logmsg("bad frame length; dropping what is pending");
      discard_pending();
      continue;
    }
    if (read_exact(frame, len)) {
      explicit_bzero(frame, len); /* a cut exec request may hold secrets */
      continue;
    }
    char type = (char)frame[0];
    uint32_t id = get32(frame + 1);
    struct cursor c = {frame + 5, len - 5};
    switch (type) {
      case 'P': send_frame('P', id, VERSION, strlen(VERSION)); break;
      case 'X': do_exec(id, &c); break;
      case 'S':
        send_frame('S', id, NULL, 0);
        sync();
        /* busybox init powers off on SIGUSR2 (runs its shutdown actions); if we are not
           under it, power off directly. */
        if (getpid() != 1 && kill(1, SIGUSR2) == 0) { sleep(5); }
        reboot(RB_POWER_OFF);
        break;
      default: {
        const char *m = "unknown request type";
        send_frame('E', id, m, strlen(m));
        send_result(id, 125, 0);
      }
    }
    explicit_bzero(frame, len);
  }
}
