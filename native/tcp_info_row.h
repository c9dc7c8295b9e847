// The tcp_info fields detection and the tunnel use, flattened into a row of uint32 values. Shared by
// the sock_diag dump (INET_DIAG_INFO attribute) and TCP_INFO by fd, so TypeScript decodes both the
// same way. Layout: struct tcp_info in include/uapi/linux/tcp.h. Older kernels send a shorter struct
// (the kernel copies min(its size, ours)); fields past what was received stay zero, and the flags say
// whether the 64-bit byte counters (Linux 4.1+) were present.
#pragma once

#include <linux/tcp.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace idg {

// Column names, in order; exported to TypeScript, which checks them at load time.
#define IDG_TCP_INFO_COLUMNS(X)                                                                     \
  X(flags) X(state) X(caState) X(retransmits) X(probes) X(backoff) X(rtoUs) X(rttUs) X(rttVarUs) \
  X(unacked) X(lost) X(lastDataSentMs) X(lastAckRecvMs) X(lastDataRecvMs) X(totalRetrans)        \
  X(bytesAckedLo) X(bytesAckedHi) X(bytesReceivedLo) X(bytesReceivedHi)

#define IDG_COUNT_COLUMN(name) +1
#define IDG_NAME_STRING(name) #name,
constexpr size_t kTcpInfoColumns = 0 IDG_TCP_INFO_COLUMNS(IDG_COUNT_COLUMN);

constexpr uint32_t kTcpInfoPresent = 1;       // a tcp_info was received
constexpr uint32_t kTcpInfoHasBytes = 2;      // ... long enough for tcpi_bytes_acked/received

/** Fill `row` (kTcpInfoColumns values) from `len` bytes of a kernel struct tcp_info at `data`. */
inline void FillTcpInfoRow(uint32_t* row, const void* data, size_t len) {
  struct tcp_info ti;
  std::memset(&ti, 0, sizeof ti);
  std::memcpy(&ti, data, len < sizeof ti ? len : sizeof ti);
  const bool hasBytes = len >= offsetof(struct tcp_info, tcpi_bytes_received) + sizeof ti.tcpi_bytes_received;
  size_t i = 0;
  row[i++] = kTcpInfoPresent | (hasBytes ? kTcpInfoHasBytes : 0);
  row[i++] = ti.tcpi_state;
  row[i++] = ti.tcpi_ca_state;
  row[i++] = ti.tcpi_retransmits;
  row[i++] = ti.tcpi_probes;
  row[i++] = ti.tcpi_backoff;
  row[i++] = ti.tcpi_rto;
  row[i++] = ti.tcpi_rtt;
  row[i++] = ti.tcpi_rttvar;
  row[i++] = ti.tcpi_unacked;
  row[i++] = ti.tcpi_lost;
  row[i++] = ti.tcpi_last_data_sent;
  row[i++] = ti.tcpi_last_ack_recv;
  row[i++] = ti.tcpi_last_data_recv;
  row[i++] = ti.tcpi_total_retrans;
  row[i++] = static_cast<uint32_t>(ti.tcpi_bytes_acked);
  row[i++] = static_cast<uint32_t>(ti.tcpi_bytes_acked >> 32);
  row[i++] = static_cast<uint32_t>(ti.tcpi_bytes_received);
  row[i++] = static_cast<uint32_t>(ti.tcpi_bytes_received >> 32);
}

/** A row for "no tcp_info" (time-wait and request sockets carry none). */
inline void FillEmptyTcpInfoRow(uint32_t* row) { std::memset(row, 0, kTcpInfoColumns * sizeof *row); }

}  // namespace idg
