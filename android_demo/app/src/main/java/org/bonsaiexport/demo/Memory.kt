package org.bonsaiexport.demo

import android.os.Debug
import java.io.File

/**
 * Process memory. RSS counts every resident page the process maps (model weights read by ONNX Runtime included);
 * PSS shares pages mapped by several processes among them, which is what Android's memory accounting uses.
 */
object Memory {
    /** Current resident set size in bytes (VmRSS). */
    fun rssBytes(): Long = statusKb("VmRSS:") * 1024

    /** Peak resident set size in bytes since the process started (VmHWM). */
    fun peakRssBytes(): Long = statusKb("VmHWM:") * 1024

    /** Proportional set size in bytes; reads smaps, so it takes a few milliseconds: call it now and then. */
    fun pssBytes(): Long = Debug.getPss() * 1024

    fun mb(bytes: Long): String = "%.0f MB".format(bytes / 1e6)

    private fun statusKb(key: String): Long = runCatching {
        File("/proc/self/status").useLines { lines ->
            lines.firstOrNull { it.startsWith(key) }?.substringAfter(key)?.trim()?.substringBefore(' ')?.toLong()
        } ?: 0L
    }.getOrDefault(0L)
}
