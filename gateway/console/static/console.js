// The console's only script: the copy button of a new key's secret. No inline script anywhere
// (the pages' CSP allows scripts from the gateway itself only).
"use strict";

function copySecret(button) {
  var field = document.getElementById(button.getAttribute("data-copy"));
  var status = document.getElementById("copy-status");
  if (!field) {
    return;
  }
  function done(message) {
    if (status) {
      status.textContent = message;
    }
    button.textContent = "Copied";
  }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(
      function () { done("The secret is on the clipboard."); },
      function () { field.select(); done("Select and copy the secret (Ctrl+C)."); }
    );
  } else {
    field.select();
    document.execCommand("copy");
    done("The secret is on the clipboard.");
  }
}

document.addEventListener("DOMContentLoaded", function () {
  var buttons = document.querySelectorAll("button[data-copy]");
  for (var i = 0; i < buttons.length; i++) {
    buttons[i].addEventListener("click", function (event) { copySecret(event.currentTarget); });
  }
});
