package org.bonsaiexport.demo

import android.app.Application
import android.content.Context
import android.net.Uri
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import kotlinx.coroutines.Job
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.catch
import kotlinx.coroutines.flow.flowOn
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.File
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicBoolean

data class UiState(
    val modelPath: String = ModelFolder.DEFAULT_PUSH_DIR,
    val modelStatus: String = "No model loaded",
    val busy: Boolean = false,
    val loaded: Boolean = false,
    val generating: Boolean = false,
    val output: String = "",
    val stats: String = "",
    val settings: Settings = Settings(),
    /** A ChatML model: each prompt is a chat turn of one conversation (newChat() starts another). */
    val chat: Boolean = false,
)

/**
 * Owns the model and runs every model call (load, generate, close) on one background thread, which is also the
 * first thread of ONNX Runtime's intra-op pool. Survives configuration changes.
 */
class MainViewModel(app: Application) : AndroidViewModel(app) {
    private val prefs = app.getSharedPreferences("bonsai_demo", Context.MODE_PRIVATE)
    private val modelExecutor = Executors.newSingleThreadExecutor { r -> Thread(r, "bonsai-model") }
    private val modelDispatcher = modelExecutor.asCoroutineDispatcher()
    private val modelsDir = File(app.filesDir, "models")

    private val _state = MutableStateFlow(
        UiState(
            modelPath = prefs.getString(KEY_PATH, ModelFolder.DEFAULT_PUSH_DIR) ?: ModelFolder.DEFAULT_PUSH_DIR,
            settings = Settings.load(prefs),
        ),
    )
    val state: StateFlow<UiState> = _state.asStateFlow()

    private var model: OrtModel? = null
    private var tokenizer: Tokenizer? = null
    // Mirrors the model's cache: set while loading and changed by chat turns, both on the model thread; read on the
    // main thread only while no model call runs (not busy, not generating).
    private var conversation: Conversation? = null
    private var generation: Job? = null
    private val stopRequested = AtomicBoolean(false)

    fun candidateFolders(): List<File> = ModelFolder.candidates(modelsDir)

    fun setModelPath(path: String) = _state.update { it.copy(modelPath = path.trim()) }

    fun load() {
        if (_state.value.busy) return
        val path = _state.value.modelPath
        prefs.edit().putString(KEY_PATH, path).apply()
        _state.update {
            it.copy(busy = true, loaded = false, chat = false, output = "", modelStatus = "Loading $path ...")
        }
        viewModelScope.launch {
            val status = try {
                withContext(modelDispatcher) { loadNow(File(path)) }
            } catch (e: Exception) {
                "Load failed: ${e.message}"
            }
            _state.update {
                it.copy(busy = false, loaded = model != null, chat = conversation != null, modelStatus = status)
            }
        }
    }

    private fun loadNow(dir: File): String {
        model?.close()
        model = null
        tokenizer = null
        conversation = null
        val started = System.nanoTime()
        val folder = ModelFolder.open(dir)
        val tok = Tokenizer.load(folder.tokenizerFile)
        // The model may pad its vocabulary; every id the tokenizer can produce needs a logit.
        if (tok.vocabSize > folder.vocabSize) {
            throw ModelFolderException(
                "${ModelFolder.TOKENIZER} has ids up to ${tok.vocabSize - 1}, the model's vocabulary ${folder.vocabSize}",
            )
        }
        val settings = _state.value.settings
        val loaded = OrtModel.load(folder, settings, getApplication<Application>().applicationInfo.nativeLibraryDir)
        model = loaded
        tokenizer = tok
        conversation = if (ChatMl.supported(tok)) Conversation() else null
        val seconds = (System.nanoTime() - started) / 1e9
        return "${folder.describe()}${if (conversation != null) "; ChatML chat" else ""}\n" +
            "custom ops: ${loaded.customOps}; ${settings.threads} threads" +
            (if (settings.pinToBigCores) " on big cores" else "") +
            String.format(java.util.Locale.ROOT, "; loaded in %.1f s; RSS %s", seconds, Memory.mb(Memory.rssBytes()))
    }

    /** Copies a folder picked with the Storage Access Framework into app storage, then loads it. */
    fun importFolder(treeUri: Uri) {
        if (_state.value.busy) return
        _state.update { it.copy(busy = true, modelStatus = "Importing ...") }
        viewModelScope.launch {
            try {
                val dir = withContext(modelDispatcher) {
                    val resolver = getApplication<Application>().contentResolver
                    ModelFolder.importTree(resolver, treeUri, modelsDir) { name, done, total ->
                        val status = "Importing $name: ${Memory.mb(done)} of ${Memory.mb(total)}"
                        _state.update { it.copy(modelStatus = status) }
                    }
                }
                _state.update { it.copy(busy = false, modelPath = dir.absolutePath) }
                load()
            } catch (e: Exception) {
                _state.update { it.copy(busy = false, modelStatus = "Import failed: ${e.message}") }
            }
        }
    }

    fun generate(prompt: String) {
        val m = model ?: return
        val tok = tokenizer ?: return
        if (_state.value.generating || _state.value.busy) return
        stopRequested.set(false)
        val chat = conversation
        val shown = if (chat != null) "${_state.value.output}${if (_state.value.output.isEmpty()) "" else "\n\n"}" +
            "> $prompt\n\n" else prompt
        _state.update { it.copy(generating = true, output = shown, stats = "prefill ...") }
        val settings = _state.value.settings
        val events = if (chat != null) {
            Generator(m, tok).chat(chat, prompt, thinking = null, settings = settings, stop = stopRequested)
        } else {
            Generator(m, tok).generate(prompt, settings, stopRequested)
        }
        generation = viewModelScope.launch {
            events.flowOn(modelDispatcher)
                .catch { e -> _state.update { it.copy(stats = "Error: ${e.message}") } }
                .collect { event ->
                    _state.update { it.copy(output = it.output + event.text, stats = event.stats.format()) }
                }
            _state.update { it.copy(generating = false) }
        }
    }

    fun stop() = stopRequested.set(true)

    /** A new conversation (chat models): the transcript cleared, the cache's next turn starts at position 0. */
    fun newChat() {
        if (_state.value.generating || _state.value.busy) return
        _state.update { it.copy(output = "", stats = "") }
        viewModelScope.launch { withContext(modelDispatcher) { conversation?.newChat() } }
    }

    fun updateSettings(new: Settings) {
        val old = _state.value.settings
        val settings = new.clamped()
        settings.save(prefs)
        _state.update { it.copy(settings = settings) }
        if (model != null && old.needsReload(settings) && !_state.value.generating) load()
    }

    override fun onCleared() {
        stopRequested.set(true)
        generation?.cancel()
        // Close on the model thread, after any run in progress, then end that thread.
        modelExecutor.execute { model?.close() }
        modelExecutor.shutdown()
    }

    private companion object {
        const val KEY_PATH = "model_path"
    }
}
