// nobat: the only script. Every page works without it; it adds four conveniences:
// "use my location" on the search form, a copy button for tracking codes, the focus on a
// refused form's error (a screen reader then reads it; an alert already on the page as it
// loads is not reliably announced), and a question before a step that cannot be undone.
(function () {
  "use strict";

  // Not when the citizen has begun typing already (the script came late on a slow line).
  var refused = document.querySelector(".alert[tabindex], [aria-invalid=true]");
  if (refused && (!document.activeElement || document.activeElement === document.body)) {
    refused.focus();
  }

  // A mark that cannot be taken back, and counts toward a citizen's suspension («نیامد»),
  // is asked about first: a click meant for the row above had made it. (Without the
  // script it is sent as it is.)
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  var locate = document.querySelector("[data-locate]");
  if (locate && "geolocation" in navigator) {
    var form = locate.closest("form");
    var status = form.querySelector("[data-locate-status]");
    form.querySelector("[data-locate-row]").hidden = false;
    locate.addEventListener("click", function () {
      status.textContent = "در حال گرفتن موقعیت…";
      navigator.geolocation.getCurrentPosition(
        function (position) {
          // To about a hundred metres: enough to rank the offices nearby, and what the URL
          // (the browser's history, a server's access log) keeps of where the citizen is.
          form.querySelector("[data-lat]").value = position.coords.latitude.toFixed(3);
          form.querySelector("[data-lon]").value = position.coords.longitude.toFixed(3);
          form.querySelector("[name=city]").value = "";
          status.textContent = "موقعیت شما گرفته شد.";
          form.submit();
        },
        function () {
          status.textContent = "موقعیت در دسترس نیست؛ نام شهر را بنویسید.";
        },
        { enableHighAccuracy: false, timeout: 15000, maximumAge: 600000 }
      );
    });
    // Typing a city means the citizen wants that city, not the position sent earlier.
    form.querySelector("[name=city]").addEventListener("input", function () {
      form.querySelector("[data-lat]").value = "";
      form.querySelector("[data-lon]").value = "";
    });
  }

  var copy = document.querySelector("[data-copy]");
  if (copy && navigator.clipboard) {
    var row = document.querySelector("[data-copy-row]");
    var copied = document.querySelector("[data-copy-status]");
    row.hidden = false;
    copy.addEventListener("click", function () {
      navigator.clipboard.writeText(copy.getAttribute("data-copy")).then(
        function () { copied.textContent = "کد رونوشت شد."; },
        function () { copied.textContent = "رونوشت نشد؛ کد را نگه دارید."; }
      );
    });
  }
})();
