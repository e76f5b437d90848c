package org.bonsaiexport.demo

import android.content.Context
import android.view.LayoutInflater
import android.widget.CheckBox
import android.widget.EditText
import android.widget.TextView
import androidx.appcompat.app.AlertDialog
import java.util.Locale

/** Edits Settings in a dialog; fields left empty or invalid keep their current value. */
object SettingsDialog {
    fun show(context: Context, current: Settings, onSave: (Settings) -> Unit) {
        val view = LayoutInflater.from(context).inflate(R.layout.dialog_settings, null)
        val temperature = view.findViewById<EditText>(R.id.temperature)
        val topP = view.findViewById<EditText>(R.id.top_p)
        val maxNewTokens = view.findViewById<EditText>(R.id.max_new_tokens)
        val threads = view.findViewById<EditText>(R.id.threads)
        val pin = view.findViewById<CheckBox>(R.id.pin_big_cores)
        val cpuInfo = view.findViewById<TextView>(R.id.cpu_info)

        temperature.setText(String.format(Locale.ROOT, "%.2f", current.temperature))
        topP.setText(String.format(Locale.ROOT, "%.2f", current.topP))
        maxNewTokens.setText(current.maxNewTokens.toString())
        threads.setText(current.threads.toString())
        pin.isChecked = current.pinToBigCores
        cpuInfo.text = context.getString(R.string.settings_reload_note) + "\n" + CpuCores.describe()

        AlertDialog.Builder(context)
            .setTitle(R.string.settings)
            .setView(view)
            .setPositiveButton(R.string.ok) { _, _ ->
                onSave(
                    Settings(
                        temperature = temperature.text.toString().toFloatOrNull() ?: current.temperature,
                        topP = topP.text.toString().toFloatOrNull() ?: current.topP,
                        maxNewTokens = maxNewTokens.text.toString().toIntOrNull() ?: current.maxNewTokens,
                        threads = threads.text.toString().toIntOrNull() ?: current.threads,
                        pinToBigCores = pin.isChecked,
                    ),
                )
            }
            .setNegativeButton(R.string.cancel, null)
            .show()
    }
}
