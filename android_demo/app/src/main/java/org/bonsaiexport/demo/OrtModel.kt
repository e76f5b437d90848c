package org.bonsaiexport.demo

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OnnxTensorLike
import ai.onnxruntime.OnnxValue
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtSession
import ai.onnxruntime.TensorInfo
import android.util.Log
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.LongBuffer

/**
 * model.onnx in an ONNX Runtime session, with its KV cache: one [1, kv heads, maxSeqLen, head dim] buffer per
 * layer and K/V, bound as both `past_key_values.{i}.*` and `present.{i}.*` (GroupQueryAttention's shared-buffer
 * mode, as onnxruntime-genai and our Python runner run it). Each forward() writes only its new positions in place,
 * instead of a new present per layer and token that the next run reads back as its past. The cost: the caches are
 * allocated at full length when the model loads (layers x 2 x kv heads x maxSeqLen x head dim x 4 bytes, 2 for fp16
 * caches).
 * Not thread-safe: call it from one thread.
 */
class OrtModel private constructor(
    val folder: ModelFolder,
    private val env: OrtEnvironment,
    private val session: OrtSession,
    private val options: OrtSession.SessionOptions,
    /** How the custom-op library was handled, for the status line. */
    val customOps: String,
) : AutoCloseable {
    private val io = folder.io
    /** The graph's cache element type: FLOAT, or FLOAT16 for an `export --kv-cache f16` folder (half the memory). */
    private val cacheType: OnnxJavaType =
        (session.inputInfo.getValue(io.pastKey(0)).info as TensorInfo).type
    private val caches: Map<String, OnnxTensor> = (0 until folder.nLayers).flatMap {
        listOf(io.pastKey(it) to cacheTensor(), io.pastValue(it) to cacheTensor())
    }.toMap()
    // present.{i}.* -> the tensor of past_key_values.{i}.*: ORT writes the new positions into the buffer it reads
    private val pinned: Map<String, OnnxValue> = (0 until folder.nLayers).flatMap {
        listOf(io.presentKey(it) to caches.getValue(io.pastKey(it)),
            io.presentValue(it) to caches.getValue(io.pastValue(it)))
    }.toMap()
    private val logitsOnly = setOf(io.logits)

    /** Positions the cache holds (the next token's position). */
    var length = 0
        private set

    /** Forget the cache; the next forward() starts at position 0 (attention reads only the positions run). */
    fun reset() {
        length = 0
    }

    /** Direct memory: ORT reads and writes it in place, without a copy. */
    private fun cacheTensor(): OnnxTensor {
        val shape = longArrayOf(1, folder.nKvHeads.toLong(), folder.maxSeqLen.toLong(), folder.headDim.toLong())
        val values = folder.nKvHeads.toLong() * folder.maxSeqLen * folder.headDim
        val bytes = values * when (cacheType) {
            OnnxJavaType.FLOAT -> 4
            OnnxJavaType.FLOAT16 -> 2
            else -> throw IllegalStateException("model.onnx: KV cache of type $cacheType; re-export the folder")
        }
        require(bytes <= Int.MAX_VALUE) { "a KV cache of $values values per layer is too large" }
        val buffer = ByteBuffer.allocateDirect(bytes.toInt()).order(ByteOrder.nativeOrder())
        return OnnxTensor.createTensor(env, buffer, shape, cacheType)
    }

    /**
     * Runs `tokens` at positions [at, at + tokens.size) and returns the logits of the last one. `at` defaults to the
     * end of the cache; a smaller one rewinds it (a chat turn whose history was rewritten): the positions after it
     * are overwritten.
     */
    fun forward(tokens: LongArray, at: Int = length): FloatArray {
        val t = tokens.size
        val total = at + t
        require(t > 0) { "no tokens" }
        require(at in 0..length) { "position $at: the cache holds $length positions (run them in order)" }
        require(total <= folder.maxSeqLen) { "positions up to $total exceed the model's context ${folder.maxSeqLen}" }
        val created = ArrayList<OnnxTensor>(3)
        try {
            val feeds = HashMap<String, OnnxTensorLike>(caches)
            fun input(name: String, values: LongArray, shape: LongArray) {
                val tensor = OnnxTensor.createTensor(env, LongBuffer.wrap(values), shape)
                created.add(tensor)
                feeds[name] = tensor
            }
            input(io.inputIds, tokens, longArrayOf(1, t.toLong()))
            input(io.attentionMask, LongArray(total) { 1L }, longArrayOf(1, total.toLong()))
            input(io.positionIds, LongArray(t) { (at + it).toLong() }, longArrayOf(1, t.toLong()))
            session.run(feeds, logitsOnly, pinned).use { result ->
                length = total
                // Absolute reads: Buffer.position(int) has a covariant override only on newer Android releases.
                val logits = (result.get(io.logits).get() as OnnxTensor).floatBuffer
                val offset = (t - 1) * folder.vocabSize
                return FloatArray(folder.vocabSize) { logits.get(offset + it) }
            }
        } finally {
            created.forEach { it.close() }
        }
    }

    override fun close() {
        reset()
        caches.values.forEach { it.close() }
        session.close()
        options.close()
    }

    companion object {
        private const val TAG = "OrtModel"
        const val OPS_LIBRARY = "libbonsai_ort_ops.so"

        /**
         * Opens the folder's model. Our custom-op library (built into the APK from custom_ops/) is registered when
         * the model is the custom variant; if it is missing or fails to load, the session is tried without it, which
         * works for the stock variant and otherwise fails with a message saying so.
         */
        fun load(folder: ModelFolder, settings: Settings, nativeLibraryDir: String): OrtModel {
            val env = OrtEnvironment.getEnvironment()
            val options = OrtSession.SessionOptions()
            try {
                options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
                options.setExecutionMode(OrtSession.SessionOptions.ExecutionMode.SEQUENTIAL)
                options.setIntraOpNumThreads(settings.threads)
                options.setInterOpNumThreads(1)
                if (settings.pinToBigCores) {
                    CpuCores.affinityConfig(settings.threads, CpuCores.bigCores())?.let {
                        options.addConfigEntry("session.intra_op_thread_affinities", it)
                    }
                }
                val customOps =
                    if (folder.needsCustomOps) registerOps(options, nativeLibraryDir) else "not needed (stock variant)"
                val session = try {
                    env.createSession(folder.modelFile.absolutePath, options)
                } catch (e: OrtException) {
                    val hint = if (folder.needsCustomOps && !customOps.startsWith("loaded")) {
                        " This is the custom-op variant and $OPS_LIBRARY is $customOps; re-export with " +
                            "--ternary-op stock to run on stock ONNX Runtime."
                    } else ""
                    throw ModelFolderException("ONNX Runtime cannot load ${folder.modelFile}: ${e.message}.$hint")
                }
                checkNames(session, folder)
                return OrtModel(folder, env, session, options, customOps)
            } catch (e: Exception) {
                options.close()
                throw e
            }
        }

        private fun registerOps(options: OrtSession.SessionOptions, nativeLibraryDir: String): String {
            val extracted = File(nativeLibraryDir, OPS_LIBRARY)
            // Extracted (useLegacyPackaging): a full path. Otherwise the bare name, which the dynamic linker
            // resolves inside the APK from the app's library namespace.
            val path = if (extracted.isFile) extracted.absolutePath else OPS_LIBRARY
            return try {
                options.registerCustomOpLibrary(path)
                "loaded"
            } catch (e: OrtException) {
                Log.w(TAG, "cannot register $path", e)
                "unavailable (${e.message})"
            }
        }

        private fun checkNames(session: OrtSession, folder: ModelFolder) {
            val io = folder.io
            val inputs = listOf(io.inputIds, io.attentionMask, io.positionIds) +
                (0 until folder.nLayers).flatMap { listOf(io.pastKey(it), io.pastValue(it)) }
            val outputs = listOf(io.logits) +
                (0 until folder.nLayers).flatMap { listOf(io.presentKey(it), io.presentValue(it)) }
            val missing = inputs.filterNot { it in session.inputNames } + outputs.filterNot { it in session.outputNames }
            if (missing.isNotEmpty()) {
                session.close()
                val names = missing.take(4).joinToString()
                throw ModelFolderException("${folder.modelFile}: lacks $names; not a bonsai-export graph")
            }
        }
    }
}
