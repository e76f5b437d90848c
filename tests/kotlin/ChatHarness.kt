// Runs the app's ChatML format (Chat.kt) on a plain JVM for tests/test_chat.py: each conversation rendered, and
// encoded by the app's tokenizer as the app runs it (no BOS/EOS added).
//
//   java -cp CLASSES:STDLIB:JSON org.bonsaiexport.demo.ChatHarnessKt REQUEST.json   prints one JSON object
//
// REQUEST: {"tokenizer": PATH, "conversations": [{"messages": [{"role", "content"}], "add_generation_prompt": BOOL,
//           "thinking": BOOL or null}]}
// Output:  {"texts": [STR], "ids": [[ID]]}
package org.bonsaiexport.demo

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.boolean
import kotlinx.serialization.json.booleanOrNull
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import java.io.File

fun main(args: Array<String>) {
    val request = Json.parseToJsonElement(File(args[0]).readText()).jsonObject
    val tokenizer = Tokenizer.load(File(request.getValue("tokenizer").jsonPrimitive.content))
    val texts = request.getValue("conversations").jsonArray.map { renderCase(it.jsonObject) }
    val ids = texts.map { text ->
        JsonArray(tokenizer.encode(text, addSpecialTokens = false).map { JsonPrimitive(it) })
    }
    println(JsonObject(mapOf("texts" to JsonArray(texts.map { JsonPrimitive(it) }), "ids" to JsonArray(ids))))
}

private fun renderCase(case: JsonObject): String {
    val messages = case.getValue("messages").jsonArray.map {
        val m = it.jsonObject
        ChatMessage(m.getValue("role").jsonPrimitive.content, m.getValue("content").jsonPrimitive.content)
    }
    return ChatMl.render(messages, case.getValue("add_generation_prompt").jsonPrimitive.boolean,
        case["thinking"]?.jsonPrimitive?.booleanOrNull)
}
